"""``memory://``: an in-process broker for tests and single-process apps.

Every :class:`MemoryTransport` with the same URL in one process shares one broker state
(``memory://`` and ``memory://name`` are distinct brokers), so an app's client publishing
from its portal loop thread and a worker fetching on its own loop see the same queues.
The state is guarded by a :class:`threading.Lock`; waiting fetchers on any loop are woken
with ``call_soon_threadsafe``. Leases run on :func:`time.monotonic`; delayed delivery
(``not_before``) is wall-clock epoch time, as the message says.

Nothing survives the process. Publishing through the default exchange ``""`` to a queue
that does not exist creates it; publishing to any other exchange requires it to have been
declared (:class:`~celeriac.messaging.transports.base.ExchangeNotFound` otherwise).
Fetching from, or measuring, a queue that does not exist sees an empty queue.

Queue arguments: ``expires`` deletes a queue nobody fetched from (or redeclared) for that
many seconds, with its messages and bindings; ``message_ttl`` drops a message that waited
longer than that unclaimed (both as AMQP's ``x-expires`` / ``x-message-ttl``, which event
and reply queues rely on to stay bounded). ``max_priority`` is advisory, ``exclusive`` and
``auto_delete`` are not enforced.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ...exceptions import ConfigurationError, ConnectionClosedError
from ..entities import Exchange, Queue, route
from ..message import Message
from ._wakeup import Waiter, WaiterRegistry
from .base import ExchangeNotFound, Outgoing, Transport, new_delivery_tag

__all__ = ["MemoryTransport"]


#: Seconds between two looks for queues unused past their ``expires``.
SWEEP_INTERVAL = 0.25

class _Entry:
    """One stored message in one queue, across all its deliveries."""

    __slots__ = (
        "body",
        "content_encoding",
        "content_type",
        "delivery_count",
        "delivery_tag",
        "exchange",
        "expires_at",
        "headers",
        "lease_until",
        "priority",
        "properties",
        "queue",
        "routing_key",
        "seq",
        "token",
    )

    def __init__(
        self,
        message: Message,
        headers: dict[str, Any],
        properties: dict[str, Any],
        exchange: str,
        routing_key: str,
        queue: str,
        tag: str,
        priority: int,
        seq: int,
    ) -> None:
        self.body = message.body
        self.headers = headers
        self.properties = properties
        self.content_type = message.content_type
        self.content_encoding = message.content_encoding
        self.exchange = exchange
        self.routing_key = routing_key
        self.queue = queue
        self.delivery_tag = tag
        self.priority = priority
        self.seq = seq
        self.delivery_count = 0
        self.token: int | None = None
        self.lease_until = 0.0
        #: Epoch seconds after which the message is dropped unclaimed (queue message_ttl).
        self.expires_at: float | None = None

    def deliver(self) -> Message:
        count = self.delivery_count
        return Message(
            self.body,
            dict(self.headers),
            dict(self.properties),
            self.content_type,
            self.content_encoding,
            delivery_info={
                "exchange": self.exchange,
                "routing_key": self.routing_key,
                "queue": self.queue,
                "priority": self.priority,
                "redelivered": count > 1,
            },
            delivery_tag=self.delivery_tag,
            redelivered=count > 1,
            delivery_count=count,
            receipt=self.token,
        )


class _Queue:
    __slots__ = ("delayed", "expires", "last_used", "message_ttl", "ready")

    def __init__(self, expires: float | None = None, message_ttl: float | None = None) -> None:
        #: ``(-priority, seq, entry)``: highest priority first, then first in first out.
        self.ready: list[tuple[int, int, _Entry]] = []
        #: ``(not_before, seq, entry)``, epoch seconds.
        self.delayed: list[tuple[float, int, _Entry]] = []
        #: Seconds unused (no fetch, no declare) after which the queue is deleted.
        self.expires = expires
        #: Seconds a message may wait in this queue before it is dropped unclaimed.
        self.message_ttl = message_ttl
        self.last_used = time.monotonic()

    def push(self, entry: _Entry) -> None:
        heapq.heappush(self.ready, (-entry.priority, entry.seq, entry))

    def promote(self, now: float) -> None:
        delayed = self.delayed
        while delayed and delayed[0][0] <= now:
            self.push(heapq.heappop(delayed)[2])


class _Broker:
    """The shared state of one ``memory://`` URL. Every method expects ``lock`` held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exchanges: dict[str, str] = {}
        #: exchange -> ordered set of ``(binding_key, queue)``.
        self.bindings: dict[str, dict[tuple[str, str], None]] = {}
        self.queues: dict[str, _Queue] = {}
        #: claim token -> entry, for every message under a lease.
        self.claimed: dict[int, _Entry] = {}
        #: ``(lease_until, token)``; stale pairs (acked or extended) are skipped lazily.
        self.leases: list[tuple[float, int]] = []
        self.waiters = WaiterRegistry()
        self.seq = itertools.count()
        self.tokens = itertools.count(1)
        self.next_sweep = 0.0

    def sweep_unused(self, now: float) -> None:
        """Delete queues declared with ``expires`` that nobody used for that long."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_INTERVAL
        for name, queue in list(self.queues.items()):
            if queue.expires is not None and now - queue.last_used > queue.expires:
                self.delete_queue(name)

    def delete_queue(self, name: str) -> None:
        self.queues.pop(name, None)
        for pairs in self.bindings.values():
            for pair in [p for p in pairs if p[1] == name]:
                del pairs[pair]

    def restore_expired(self, now: float) -> None:
        leases = self.leases
        while leases and leases[0][0] <= now:
            until, token = heapq.heappop(leases)
            entry = self.claimed.get(token)
            if entry is None or entry.lease_until != until:
                continue
            del self.claimed[token]
            self.requeue(entry)

    def requeue(self, entry: _Entry) -> None:
        entry.token = None
        queue = self.queues.get(entry.queue)
        if queue is not None:  # a deleted queue takes its messages with it
            queue.push(entry)

    def next_event(self, names: Iterable[str]) -> float | None:
        """Seconds until a delayed message of ``names`` or any lease falls due."""
        soonest: float | None = None
        wall = time.time()
        for name in names:
            queue = self.queues.get(name)
            if queue is not None and queue.delayed:
                due = queue.delayed[0][0] - wall
                soonest = due if soonest is None else min(soonest, due)
        if self.leases:
            due = self.leases[0][0] - time.monotonic()
            soonest = due if soonest is None else min(soonest, due)
        return soonest


#: Broker state by URL, shared by every transport of this process.
_brokers: dict[str, _Broker] = {}
_brokers_lock = threading.Lock()


def _reinit_locks_after_fork() -> None:
    """A lock held by a parent thread at fork time would stay held forever in the child."""
    global _brokers_lock
    _brokers_lock = threading.Lock()
    for broker in _brokers.values():
        broker.lock = threading.Lock()
        broker.waiters = WaiterRegistry()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_locks_after_fork)


def _broker_for(url: str) -> _Broker:
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"memory:// URLs take only a name (memory://name), not {url!r}", key="broker_url"
        )
    key = (parts.netloc + parts.path).strip("/")
    with _brokers_lock:
        broker = _brokers.get(key)
        if broker is None:
            broker = _brokers[key] = _Broker()
        return broker


def _receipt(message: Message) -> int:
    receipt = message.receipt
    if not isinstance(receipt, int):
        raise ValueError(
            f"{message!r} was not delivered by a memory:// transport (receipt {receipt!r}); "
            "only fetched messages can be settled or extended"
        )
    return receipt


class MemoryTransport(Transport):
    """The in-process transport (see the module docstring for its rules)."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    supports_delayed_delivery: ClassVar[bool] = True

    def __init__(self, url: str = "memory://", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self._broker = _broker_for(url)
        self._connected = False
        self._rotation = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        # Claims stay under their leases: the Connection may reconnect and settle them.
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def _state(self) -> _Broker:
        if not self._connected:
            raise ConnectionClosedError(f"{self!r} is not connected (call connect() first)")
        return self._broker

    # -- topology ----------------------------------------------------------------------

    async def declare_exchange(self, exchange: Exchange) -> None:
        broker = self._state()
        with broker.lock:
            _declare_exchange(broker, exchange)

    async def declare_queue(self, queue: Queue) -> None:
        broker = self._state()
        with broker.lock:
            exchange = queue.effective_exchange
            if exchange.name:
                _declare_exchange(broker, exchange)
            for binding in queue.all_bindings():
                if binding.exchange not in broker.exchanges:
                    raise ExchangeNotFound(binding.exchange, list(broker.exchanges))
            known = broker.queues.get(queue.name)
            if known is None:
                broker.queues[queue.name] = _Queue(queue.expires, queue.message_ttl)
            else:
                known.expires, known.message_ttl = queue.expires, queue.message_ttl
                known.last_used = time.monotonic()
            for binding in queue.all_bindings():
                broker.bindings.setdefault(binding.exchange, {})[
                    (binding.routing_key, binding.queue)
                ] = None

    async def delete_queue(self, name: str) -> None:
        broker = self._state()
        with broker.lock:
            broker.delete_queue(name)
            woken = broker.waiters.take((name,))
        for waiter in woken:
            waiter.wake()

    # -- moving messages ---------------------------------------------------------------

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        broker = self._state()
        touched: set[str] = set()
        with broker.lock:
            now = time.time()
            # Validate and route the whole batch before storing any of it: all or nothing.
            routed = [(_prepare(out), _targets(broker, out)) for out in batch]
            for (out, tag, priority, headers, properties), targets in routed:
                for name in targets:
                    queue = broker.queues.get(name)
                    if queue is None:  # only reachable through the default exchange
                        queue = broker.queues[name] = _Queue()
                    entry = _Entry(
                        out.message, headers, properties, out.exchange, out.routing_key,
                        name, tag, priority, next(broker.seq),
                    )  # fmt: skip
                    if queue.message_ttl is not None:
                        entry.expires_at = now + queue.message_ttl
                    if out.not_before is not None and out.not_before > now:
                        heapq.heappush(queue.delayed, (out.not_before, entry.seq, entry))
                    else:
                        queue.push(entry)
                    touched.add(name)
            woken = broker.waiters.take(touched)
        for waiter in woken:
            waiter.wake()

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Message]:
        _check_fetch(queues, limit)
        broker = self._state()
        deadline = time.monotonic() + timeout
        while True:
            waiter: Waiter | None = None
            with broker.lock:
                claimed = self._claim(broker, queues, limit)
                remaining = deadline - time.monotonic()
                if not claimed and remaining > 0:
                    due = broker.next_event(queues)
                    if due is not None:
                        remaining = min(remaining, max(due, 0.0))
                    waiter = Waiter()
                    broker.waiters.add(waiter, queues)
            if claimed or waiter is None:
                return claimed
            try:
                await waiter.wait(remaining)
            finally:
                with broker.lock:
                    broker.waiters.remove(waiter, queues)
            self._state()  # closed while waiting: say so instead of returning nothing

    def _claim(self, broker: _Broker, names: Sequence[str], limit: int) -> list[Message]:
        now = time.monotonic()
        broker.restore_expired(now)
        broker.sweep_unused(now)
        wall = time.time()
        lease_until = now + self.visibility_timeout
        out: list[Message] = []
        count = len(names)
        start = self._rotation % count
        self._rotation += 1
        for i in range(count):
            queue = broker.queues.get(names[(start + i) % count])
            if queue is None:
                continue
            queue.last_used = now
            queue.promote(wall)
            ready = queue.ready
            while ready and len(out) < limit:
                entry = heapq.heappop(ready)[2]
                if entry.expires_at is not None and entry.expires_at <= wall:
                    continue  # past the queue's message_ttl: dropped, as AMQP does
                token = next(broker.tokens)
                entry.token = token
                entry.delivery_count += 1
                entry.lease_until = lease_until
                broker.claimed[token] = entry
                heapq.heappush(broker.leases, (lease_until, token))
                out.append(entry.deliver())
            if len(out) >= limit:
                break
        return out

    async def ack(self, messages: Sequence[Message]) -> None:
        broker = self._state()
        receipts = [_receipt(m) for m in messages]
        with broker.lock:
            for token in receipts:
                broker.claimed.pop(token, None)

    async def reject(self, messages: Sequence[Message], requeue: bool) -> None:
        broker = self._state()
        receipts = [_receipt(m) for m in messages]
        touched: set[str] = set()
        with broker.lock:
            for token in receipts:
                entry = broker.claimed.pop(token, None)
                if entry is not None and requeue:
                    broker.requeue(entry)
                    touched.add(entry.queue)
            woken = broker.waiters.take(touched)
        for waiter in woken:
            waiter.wake()

    async def extend(self, messages: Sequence[Message], seconds: float | None = None) -> None:
        broker = self._state()
        receipts = [_receipt(m) for m in messages]
        until = time.monotonic() + (self.visibility_timeout if seconds is None else seconds)
        with broker.lock:
            for token in receipts:
                entry = broker.claimed.get(token)
                if entry is not None:
                    entry.lease_until = until
                    heapq.heappush(broker.leases, (until, token))

    async def purge(self, queue: str) -> int:
        broker = self._state()
        with broker.lock:
            q = broker.queues.get(queue)
            if q is None:
                return 0
            count = len(q.ready) + len(q.delayed)
            q.ready.clear()
            q.delayed.clear()
            return count

    async def queue_length(self, queue: str) -> int:
        broker = self._state()
        with broker.lock:
            q = broker.queues.get(queue)
            return 0 if q is None else len(q.ready) + len(q.delayed)


def _check_fetch(queues: Sequence[str], limit: int) -> None:
    if isinstance(queues, str):
        raise TypeError(f"fetch() takes a sequence of queue names, not the string {queues!r}")
    if not queues:
        raise ValueError("fetch() needs at least one queue name")
    if limit < 1:
        raise ValueError(f"fetch() limit must be at least 1, got {limit}")


def _declare_exchange(broker: _Broker, exchange: Exchange) -> None:
    if not exchange.name:
        return  # the default exchange always exists
    known = broker.exchanges.get(exchange.name)
    if known is not None and known != exchange.type:
        raise ConfigurationError(
            f"exchange {exchange.name!r} is already declared as {known!r}; "
            f"cannot redeclare it as {exchange.type!r}",
            key=exchange.name,
        )
    broker.exchanges[exchange.name] = exchange.type
    broker.bindings.setdefault(exchange.name, {})


def _prepare(out: Outgoing) -> tuple[Outgoing, str, int, dict[str, Any], dict[str, Any]]:
    """Validate one outgoing message and take the copies the broker will keep."""
    message = out.message
    check_outgoing(out)
    priority = message_priority(message)
    properties = dict(message.properties)
    tag = message.delivery_tag or new_delivery_tag()
    properties["delivery_tag"] = tag
    return out, tag, priority, dict(message.headers), properties


def check_outgoing(out: Outgoing) -> None:
    """Refuse what no transport can store, with a message that says what to fix."""
    body = out.message.body
    if not isinstance(body, bytes):
        raise TypeError(f"message body must be bytes (encode it first), got {type(body).__name__}")
    if not isinstance(out.exchange, str) or not isinstance(out.routing_key, str):
        raise TypeError(
            f"exchange and routing key must be strings, got {out.exchange!r} and "
            f"{out.routing_key!r}"
        )
    not_before = out.not_before
    if not_before is not None and (
        isinstance(not_before, bool) or not isinstance(not_before, int | float)
    ):
        raise TypeError(f"not_before must be epoch seconds (a number), got {not_before!r}")
    if out.exchange == "" and not out.routing_key:
        raise ValueError(
            "publishing through the default exchange '' needs a routing key naming the queue"
        )


def message_priority(message: Message) -> int:
    """The message's integer priority (``properties["priority"]``), with a clear error."""
    raw = message.properties.get("priority")
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int):
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"message priority must be an integer, got {raw!r}") from None
    return raw


def _targets(broker: _Broker, out: Outgoing) -> list[str]:
    if out.exchange == "":
        return [out.routing_key]
    kind = broker.exchanges.get(out.exchange)
    if kind is None:
        raise ExchangeNotFound(out.exchange, list(broker.exchanges))
    return route(kind, out.routing_key, broker.bindings.get(out.exchange, {}))
