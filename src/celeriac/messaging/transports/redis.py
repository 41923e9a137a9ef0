"""``redis://``: kombu's Redis layout, with claims that cannot be lost or torn.

Celery peers read and write the same keys (spec ``celery-wire.md`` section 2): a queue is
the list ``<queue>`` plus one list per priority step, bindings live in
``_kombu.binding.<exchange>``, claimed messages are recorded in ``unacked`` /
``unacked_index``, and fanout exchanges travel over PUB/SUB. What celeriac adds, in Lua
scripts (:mod:`._redis_scripts`) so no step can be half done:

* a fetch claims a whole batch across queues and records every claim as unacked in one
  atomic call, judged by Redis's clock, and counts the delivery;
* every claim carries a token; an ack, extend or requeue from a holder that lost its lease
  is ignored instead of removing the newer holder's record;
* unacked messages past their lease are restored under kombu's ``unacked_mutex``; a live
  holder pushes its leases ahead with :meth:`RedisTransport.extend`;
* delayed messages (``not_before``) wait in a sorted set and move to their queue when due,
  so an ETA task is not held in a worker's memory;
* publishers ring a doorbell channel when a queue's list stops being empty, so a waiting
  fetch wakes at once; Celery publishers don't ring, and their messages are found by a
  poll every ``polling_interval`` (0.1 s);
* a fetch whose claim came back short leaves an *offer* on its queues, and a celeriac
  publish that finds one (and the queue empty) records the claim for that fetch and sends
  it the message over pub/sub in the same script: an idle worker starts a task without a
  claim's round trip. A hand-off nobody fetches within :data:`HANDOFF_HOLD` seconds, or
  still held at close, goes back to its queue (see :mod:`._redis_scripts`).

Priorities follow kombu on Redis: a message goes to the list of the largest step
(``priority_steps``, default 0, 3, 6, 9) not above its priority, and **lower steps are
served first** (priority 0 is the most urgent, the opposite of RabbitMQ), so celeriac and
Celery order a shared queue the same way.

Fanout: messages on a fanout exchange reach only transports subscribed at the time, as
with kombu. A queue bound to one is subscribed when declared, and its messages wait in a
bounded local buffer (``fanout_buffer_limit``). A binding key with ``*`` or ``#`` filters
by routing key with topic rules (kombu's fanout patterns, which Celery's event receivers
use); any other binding receives every message of the exchange.

Options (``broker_transport_options``): see :mod:`._redis_options`. The layout is for one
Redis server or a Sentinel-managed master, not Redis Cluster (as kombu's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, cast

import orjson
from redis import asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.sentinel import Sentinel

from ...exceptions import (
    BrokerConnectionError,
    ConfigurationError,
    ConnectionBrokenError,
    ConnectionClosedError,
)
from ...utils.ids import uuid4_hex
from ..entities import Exchange, Queue, topic_matches
from ..message import Message
from . import _redis_scripts as scripts
from ._redis_common import map_redis_errors
from ._redis_fanout import FanoutBuffer, LinkSubscriber, Subscriber
from ._redis_layout import (
    Layout,
    decode_envelope,
    encode_envelope,
    mark_redelivered,
    parse_url,
    topic_pattern,
)
from ._redis_link import Link, plain_options
from ._redis_options import RedisTransportOptions
from ._redis_sync import SyncPublisher
from .base import QUARANTINE_QUEUE, ExchangeNotFound, Outgoing, Transport, mask_url
from .memory import _check_fetch, check_outgoing, message_priority

__all__ = ["RedisTransport"]

#: Forks this process has gone through: a transport opened before a fork is not usable in
#: the child. Comparing a counter is cheaper than ``os.getpid()`` on every command.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)

logger = logging.getLogger("celeriac.messaging.redis")

#: Messages per publish script call: bounds how long one call holds Redis.
PUBLISH_CHUNK = 500

#: Seconds a hand-off may wait for a fetch of its queue before it goes back to the queue
#: (its fetch stopped, or was cancelled, while its offer was still out).
HANDOFF_HOLD = 1.0

#: Seconds an offer outlives its claim beyond ``polling_interval``, the longest an idle
#: fetch goes between claims (each withdraws it and makes a new one).
OFFER_MARGIN = 0.25

#: Seconds ``close`` waits for Redis to confirm it stopped sending hand-offs, and a
#: return of unfetched hand-offs waits for Redis.
RETURN_WAIT = 1.0


class _Claim:
    """The receipt of one claimed list message: what fences and requeues it."""

    __slots__ = ("queue", "raw", "step", "tag", "token")

    def __init__(self, tag: str, token: str, queue: str, step: int, raw: bytes) -> None:
        self.tag = tag
        self.token = token
        self.queue = queue
        self.step = step
        self.raw = raw


class _Bell:
    """What one set of fetched queues waits on between claims.

    A bell rings only for its own queues' doorbells (and for every failure or close), so
    the control consumer does not claim on every task's doorbell. ``idle_until`` records
    that the last claim came back short, which means the queues' lists were empty when it
    ran: until then, or until a doorbell sets ``due``, another claim could only find
    nothing. A hand-off or a fanout message only wakes the fetch (``event``): it is in a
    local buffer, and the offer a hand-off came through stays out for the rest.
    """

    __slots__ = ("due", "event", "idle_until", "names", "offer", "offered_until")

    def __init__(self, names: tuple[str, ...], offer: str) -> None:
        self.names = frozenset(names)
        self.event = asyncio.Event()
        self.due = False
        self.idle_until = 0.0
        #: The id of the offers its claims make (see ``_celeriac.offers``), and until when
        #: (loop time) the last one may be out.
        self.offer = offer
        self.offered_until = 0.0


class _FanoutReceipt:
    """The receipt of a fanout message: it lives only in this process's buffer."""

    __slots__ = ("count", "queue", "raw")

    def __init__(self, queue: str, raw: bytes, count: int) -> None:
        self.queue = queue
        self.raw = raw
        self.count = count


class RedisTransport(Transport):
    """The Redis transport (see the module docstring for its rules)."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix", "redis+socket", "sentinel")
    supports_delayed_delivery: ClassVar[bool] = True
    #: Lower priority numbers are served first, as kombu does on Redis.
    lower_priority_first: ClassVar[bool] = True
    #: Celery switches its events exchange to fanout on Redis; peers must agree.
    event_exchange_type: ClassVar[str] = "fanout"

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self._where = mask_url(url)
        self.settings = RedisTransportOptions.parse(self.options)
        self.visibility_timeout = self.settings.visibility_timeout
        self.endpoint = parse_url(url)
        if self.endpoint.sentinels and not self.settings.master_name:
            raise ConfigurationError(
                "a sentinel:// broker URL needs the master's name: set "
                "broker_transport_options={'master_name': 'mymaster'}",
                key="master_name",
            )
        s = self.settings
        self.layout = Layout(
            s.global_keyprefix,
            s.sep,
            s.priority_steps,
            self.endpoint.db,
            s.fanout_prefix,
            s.unacked_key,
            s.unacked_index_key,
            s.unacked_mutex_key,
        )
        self._unacked_keys = [
            self.layout.unacked,
            self.layout.unacked_index,
            self.layout.lease,
        ]
        self._common = [self.layout.prefix, self.layout.sep, self.layout.steps_arg]
        self._publish_head = [*self._common, self.layout.ready_prefix]
        self._client: aioredis.Redis | None = None
        self._subscriber: Subscriber | LinkSubscriber | None = None
        self._scripts: dict[str, Any] = {}
        #: The scripts' connection where redis-py is not needed (see ``_redis_link``).
        self._link: Link | None = None
        #: Blocking connections for sync publishers (None where redis-py is needed).
        self._sync: SyncPublisher | None = None
        #: Queues this connection declared with no expiry and no message TTL: the publish
        #: script has nothing to do for an undelayed message to one but push it and ring
        #: (declaring overwrites a queue's arguments, so ours are the queue's until it is
        #: declared again, as AMQP refuses other arguments for a declared queue).
        self._plain: set[str] = set()
        #: Plain queues on which the last push here found offers out (so the next push
        #: there takes the PUSH script, which can hand off): see ``_push_commands``.
        self._offers_out: set[str] = set()
        #: Queue sets fetched together -> when their served mark is next renewed.
        self._presence_due: dict[tuple[str, ...], float] = {}
        #: What an ACL refused and was said already (see ``_say_once``).
        self._said: set[Any] = set()
        self._pid = os.getpid()
        self._forks = _forks
        self._forks_at_open = _forks
        self._rotation = 0
        self._next_restore = 0.0
        #: One bell per set of queues fetched together; queue name -> the bells it rings.
        self._bells: dict[tuple[str, ...], _Bell] = {}
        self._offers_made = 0
        self._listeners: dict[str, list[_Bell]] = {}
        #: Queue lists whose doorbells this connection's subscriber already listens to.
        self._doorbells: set[tuple[str, ...]] = set()
        #: Exchange name -> type, as declared here or found in ``_celeriac.exchanges``.
        self._exchanges: dict[str, str] = {}
        #: Local queues bound to fanout exchanges, and their buffers.
        self._fanout: dict[str, FanoutBuffer] = {}
        #: Hand-offs come on this channel while ``_offering`` (subscribed to it on the
        #: current subscriber); they wait per queue, with when they came, for a fetch.
        self._handoff_id = ""
        self._handoff_channel = ""
        self._new_handoff_channel()
        self._offering = False
        #: An ACL refused the hand-off channel (until the next connect), or close began.
        self._offers_refused = False
        self._closing = False
        #: Seconds an offer stays out.
        self._offer_life = self.settings.polling_interval + OFFER_MARGIN
        #: Offers of superseded queue sets, withdrawn by the next claim (``_supersede``).
        self._withdraw: list[str] = []
        self._last_bell: _Bell | None = None
        self._handoffs: dict[str, deque[tuple[float, Message]]] = {}
        #: Hand-offs whose return failed: it may have run even so (a timeout cancels only
        #: the wait), so they are never given to a fetch again, only returned again (the
        #: return is fenced: twice is harmless).
        self._unreturned: list[Message] = []
        self._handoff_timer: asyncio.TimerHandle | None = None
        #: Returns of unfetched hand-offs in flight (kept so they are not collected).
        self._returning: set[asyncio.Task[None]] = set()
        #: Fanout exchange -> ``[(binding key, queue)]`` of local queues.
        self._fanout_routes: dict[str, list[tuple[str, str]]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, check the server answers, and load the scripts.

        Raises:
            ConnectionBrokenError: Redis cannot be reached.
            ConfigurationError: Redis refused the credentials.
        """
        if self.is_connected:
            return
        if self._client is not None:  # a broken or inherited connection: start afresh
            await self._stop_offering()
            await self._drop()
        self._pid = os.getpid()
        self._forks = _forks
        client = self._new_client()
        try:
            with self._map_errors():
                await client.ping()
        except BaseException:
            with contextlib.suppress(Exception):
                await client.aclose()
            raise
        self._client = client
        self._scripts = {
            name: client.register_script(getattr(scripts, name)) for name in scripts.__all__
        }
        options = {**self.endpoint.kwargs, **self.settings.client}
        if not self.endpoint.sentinels and plain_options(options):
            self._subscriber = LinkSubscriber(
                options, self.endpoint.db, self._on_fanout, self._on_ready, self._on_failure
            )
        else:
            self._subscriber = Subscriber(
                client, self._on_fanout, self._on_ready, self._on_failure, self._refused_late
            )
        if not self.endpoint.sentinels:
            self._sync = SyncPublisher.for_client(
                options,
                self.endpoint.db,
                {
                    name: (getattr(scripts, name), self._scripts[name].sha)
                    for name in ("PUBLISH", "PUSH")
                },
                self.settings.sync_publish_spin,
            )
            if plain_options(options):
                try:
                    with self._map_errors():
                        self._link = await Link.open(options, self.endpoint.db)
                except BaseException:
                    await self._drop()
                    raise
        if self._forks_at_open != _forks:
            # A forked child: the hand-offs, offers and channel are the parent's.
            self._new_handoff_channel()
            self._handoffs.clear()
            self._unreturned.clear()
            self._handoff_timer = None
            self._returning.clear()
            self._bells.clear()
            self._listeners.clear()
            self._last_bell = None
            self._withdraw.clear()
        else:  # reconnected: what close could not return goes back now
            self._arm_return()
        self._forks_at_open = _forks
        self._offering = False
        self._offers_refused = False
        self._closing = False
        self._doorbells.clear()
        self._plain.clear()
        self._presence_due.clear()
        self._next_restore = 0.0
        patterns = [
            p
            for ex, routes in self._fanout_routes.items()
            for key, _ in routes
            for p in self.layout.fanout_patterns(ex, key)
        ]
        if patterns:  # reconnected: listen again to what local queues are bound to
            await self._psubscribe(patterns)

    def _new_client(self) -> aioredis.Redis:
        kwargs = {**self.endpoint.kwargs, **self.settings.client}
        if self.endpoint.sentinels:
            kwargs.pop("db", None)
            sentinel = Sentinel(
                list(self.endpoint.sentinels),
                sentinel_kwargs=self.settings.sentinel_kwargs or None,
                **{k: v for k, v in kwargs.items() if k != "max_connections"},
            )
            assert self.settings.master_name is not None
            return sentinel.master_for(self.settings.master_name, db=self.endpoint.db)
        max_connections = kwargs.pop("max_connections")
        unix = kwargs.pop("unix_socket_path", None)
        if unix is not None:
            kwargs["connection_class"] = aioredis.UnixDomainSocketConnection
            kwargs["path"] = unix
        elif kwargs.pop("ssl", False):
            kwargs["connection_class"] = aioredis.SSLConnection
        pool = aioredis.BlockingConnectionPool(
            max_connections=max_connections, timeout=None, **kwargs
        )
        return aioredis.Redis(connection_pool=pool)

    async def close(self) -> None:
        """Close the connections. Claims stay under their leases (a reconnect settles
        them), except hand-offs no fetch took: those go back to their queues (or, where
        Redis cannot be reached, wait for a reconnect or their leases)."""
        self._closing = True
        await self._stop_offering()
        await self._drop()
        self._fanout_routes.clear()
        self._fanout.clear()

    async def _drop(self) -> None:
        subscriber, self._subscriber = self._subscriber, None
        client, self._client = self._client, None
        link, self._link = self._link, None
        if link is not None and self._forks == _forks:
            # Not in a forked child: closing would unregister the socket from the epoll
            # instance it shares with the parent. The child keeps its copy of the
            # socket open (the inherited loop still refers to it) until it exits.
            link.close()
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        self._ring_all()  # waiting fetches notice the close
        if subscriber is not None:
            await subscriber.stop(close=self._forks == _forks)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect()

    @property
    def is_connected(self) -> bool:
        return (
            self._client is not None
            and (self._subscriber is None or self._subscriber.failure is None)
            and (self._link is None or not self._link.closed)
            and self._forks == _forks
        )

    def _require(self) -> aioredis.Redis:
        client = self._client
        if client is None:
            raise ConnectionClosedError(f"{self!r} is not connected (call connect() first)")
        if self._forks != _forks:
            raise ConnectionBrokenError(
                f"{self!r} was opened by process {self._pid}; a forked child must reconnect"
            )
        subscriber = self._subscriber
        if subscriber is not None and subscriber.failure is not None:
            raise ConnectionBrokenError(
                f"broker {self._where}: subscription lost: {subscriber.failure}"
            )
        link = self._link
        if link is not None and link.closed:
            raise ConnectionBrokenError(f"broker {self._where}: {link.failure}")
        return client

    def _map_errors(self) -> contextlib.AbstractContextManager[None]:
        """Turn redis-py's exceptions into celeriac's at the transport boundary."""
        return map_redis_errors("broker", self._where, "broker_url")

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._require()
        link = self._link
        with self._map_errors():
            if link is not None:
                script = self._scripts[name]
                return await link.evalsha(script.sha, script.script, keys, args)
            return await self._scripts[name](keys=keys, args=args, client=client)

    # -- pub/sub callbacks (on this loop) -------------------------------------------------

    def _bell_for(self, names: tuple[str, ...]) -> _Bell:
        bell = self._bells.get(names)
        if bell is None:
            if len(self._bells) > 64:  # queue sets come and go (control, add_consumer)
                self._ring_all()
                self._bells.clear()
                self._listeners.clear()
            self._offers_made += 1
            offer = f"{self._handoff_id}.{self._offers_made}"
            bell = self._bells[names] = _Bell(names, offer)
            for name in names:
                self._listeners.setdefault(name, []).append(bell)
        return bell

    def _ring(self, queue: str, due: bool = True) -> None:
        """Wake the fetches of ``queue``; ``due``: a claim may find something new."""
        for bell in self._listeners.get(queue, ()):
            if due:
                bell.due = True
            bell.event.set()

    def _ring_all(self) -> None:
        for bell in self._bells.values():
            bell.due = True
            bell.event.set()

    def _on_ready(self, channel: str, data: bytes) -> None:
        prefix = self.layout.ready_prefix
        if channel.startswith(prefix):
            self._ring(channel[len(prefix) :])
        elif channel == self._handoff_channel:
            self._on_handoff(data)
        else:
            self._ring_all()

    def _new_handoff_channel(self) -> None:
        self._handoff_id = uuid4_hex()
        self._handoff_channel = f"{self.layout.prefix}_celeriac.handoff.{self._handoff_id}"

    def _on_handoff(self, data: bytes) -> None:
        """A message a publish claimed for one of our fetches: ``"<token>[L] <len(queue)>
        <queue><envelope>"`` (see ``_celeriac.offers``). ``L`` marks the last message of
        its offer: the fetch claims at once, which makes a new offer before the next
        publish would find none (and take the doorbell's slower path)."""
        try:
            first = data.index(b" ")
            second = data.index(b" ", first + 1)
            last = data[first - 1] == 76  # b"L"
            token = data[: first - 1 if last else first].decode()
            start = second + 1
            end = start + int(data[first + 1 : second])
            queue = data[start:end].decode()
            raw = data[end:]
            count = int(token)
        except (ValueError, UnicodeDecodeError):
            logger.error(
                "broker %s: unreadable hand-off on %s (%r...): ignored; its claim is "
                "restored when its lease passes",
                self._where,
                self._handoff_channel,
                data[:80],
            )
            return
        message = decode_envelope(raw, queue, count, None)
        step = self.layout.step(_priority_of(message))
        message.receipt = _Claim(message.delivery_tag or "", token, queue, step, raw)
        self._handoffs.setdefault(queue, deque()).append(
            (asyncio.get_running_loop().time(), message)
        )
        self._arm_return()
        self._ring(queue, due=last)

    def _take_handoffs(self, names: list[str], limit: int) -> list[Message]:
        out: list[Message] = []
        handoffs = self._handoffs
        for name in names:
            waiting = handoffs.get(name)
            if waiting is None:
                continue
            while waiting and len(out) < limit:
                out.append(waiting.popleft()[1])
            if not waiting:
                del handoffs[name]
        return out

    def _holds_handoffs(self, names: list[str]) -> bool:
        return bool(self._handoffs) and any(name in self._handoffs for name in names)

    def _arm_return(self) -> None:
        """Return stale hand-offs when the oldest has waited :data:`HANDOFF_HOLD` s, and
        retry failed returns after as long."""
        if self._handoff_timer is not None or not (self._handoffs or self._unreturned):
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + HANDOFF_HOLD
        if self._handoffs:
            oldest = min(waiting[0][0] for waiting in self._handoffs.values())
            when = min(when, oldest + HANDOFF_HOLD)
        self._handoff_timer = loop.call_at(when, self._return_stale)

    def _return_stale(self) -> None:
        """Hand-offs no fetch took in :data:`HANDOFF_HOLD` seconds go back to their queues
        (their fetch stopped while its offer was out)."""
        self._handoff_timer = None
        if not self.is_connected:  # closed or broken: a reconnect arms this again
            return
        loop = asyncio.get_running_loop()
        due = loop.time() - HANDOFF_HOLD
        stale, self._unreturned = self._unreturned, []
        for name in list(self._handoffs):
            waiting = self._handoffs[name]
            while waiting and waiting[0][0] <= due:
                stale.append(waiting.popleft()[1])
            if not waiting:
                del self._handoffs[name]
        self._arm_return()
        if stale:
            task = loop.create_task(self._return_handoffs(stale))
            self._returning.add(task)
            task.add_done_callback(self._returning.discard)

    async def _return_handoffs(self, messages: list[Message]) -> None:
        """Put hand-offs the application never saw back at the front of their queues (as
        AMQP brokers do with prefetched messages, they come back marked redelivered).
        Where Redis cannot take them now they are tried again later (see
        ``_unreturned``): dropping them would leave them to their leases."""
        try:
            async with asyncio.timeout(RETURN_WAIT):
                await self._requeue([cast(_Claim, m.receipt) for m in messages])
        except Exception as exc:
            logger.warning(
                "broker %s: could not return %d unfetched hand-off(s) to their queues (%s): "
                "trying again in %s s (or when their leases pass)",
                self._where,
                len(messages),
                exc,
                HANDOFF_HOLD,
            )
            self._unreturned.extend(messages)
            self._arm_return()

    async def _stop_offering(self) -> None:
        """Stop taking hand-offs and return those no fetch took. Unsubscribing first means
        every hand-off Redis sent is here by then; later publishes find no subscriber and
        push as usual."""
        offering, self._offering = self._offering, False
        if self._forks != _forks:  # the parent's connection and hand-offs: leave them be
            return
        subscriber = self._subscriber
        if offering and subscriber is not None and subscriber.failure is None:
            # Bounded: a Redis that does not answer cannot be waited for at close. A
            # hand-off still on the wire then is restored when its lease passes.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(RETURN_WAIT):
                    await subscriber.unsubscribe(self._handoff_channel)
        if self._handoff_timer is not None:
            self._handoff_timer.cancel()
            self._handoff_timer = None
        if self._returning:  # first: one that fails adds to what is returned below
            await asyncio.wait(self._returning, timeout=RETURN_WAIT)
        if (self._handoffs or self._unreturned) and self.is_connected:
            held = [m for waiting in self._handoffs.values() for _, m in waiting]
            held += self._unreturned
            self._handoffs.clear()
            self._unreturned = []
            await self._return_handoffs(held)
        # else kept: a reconnect arms their return (a fetch may take those not tried yet)

    def _on_failure(self, exc: BaseException) -> None:
        logger.warning("broker %s: subscription connection lost: %s", self._where, exc)
        self._ring_all()

    def _on_fanout(self, channel: str, data: bytes) -> None:
        parsed = self.layout.parse_channel(channel)
        if parsed is None:
            return
        exchange, routing_key = parsed
        for key, queue in self._fanout_routes.get(exchange, ()):
            if _fanout_accepts(key, routing_key):
                buffer = self._fanout.get(queue)
                if buffer is not None:
                    buffer.push(data)
                    self._ring(queue, due=False)

    # -- topology ----------------------------------------------------------------------

    async def declare_exchange(self, exchange: Exchange) -> None:
        client = self._require()
        if not exchange.name:
            return
        known = self._exchanges.get(exchange.name)
        if known is None:
            with self._map_errors():
                raw = await client.hget(self.layout.exchanges, exchange.name)
            known = raw.decode() if raw is not None else None
        if known is not None and known != exchange.type:
            raise ConfigurationError(
                f"exchange {exchange.name!r} is already declared as {known!r}; "
                f"cannot redeclare it as {exchange.type!r}",
                key=exchange.name,
            )
        if known is None:
            with self._map_errors():
                await client.hset(self.layout.exchanges, exchange.name, exchange.type)
        self._exchanges[exchange.name] = exchange.type

    async def _exchange_types(self, names: set[str]) -> dict[str, str]:
        """The type of every named exchange; kombu-declared ones are direct, as kombu has it.

        Raises:
            ExchangeNotFound: nobody declared one of them.
        """
        found = {n: self._exchanges[n] for n in names if n in self._exchanges}
        missing = sorted(names - found.keys())
        if missing:
            client = self._require()
            with self._map_errors():
                types = await client.hmget(self.layout.exchanges, missing)
            for name, kind in zip(missing, types, strict=True):
                if kind is not None:
                    found[name] = self._exchanges[name] = kind.decode()
            for name in missing:
                if name in found:
                    continue
                with self._map_errors():
                    bound = await client.exists(self.layout.binding_key(name))
                if not bound:
                    raise ExchangeNotFound(name, list(self._exchanges))
                # A kombu peer bound queues to it: kombu routes undeclared exchanges as direct.
                found[name] = "direct"
        return found

    async def declare_queue(self, queue: Queue) -> None:
        exchange = queue.effective_exchange
        if exchange.name:
            await self.declare_exchange(exchange)
        bindings = queue.all_bindings()
        types = await self._exchange_types({b.exchange for b in bindings})
        members = []
        for binding in bindings:
            kind = types[binding.exchange]
            pattern = topic_pattern(binding.routing_key) if kind == "topic" else ""
            members.append(
                [
                    binding.exchange,
                    self.layout.binding_member(binding.routing_key, pattern, binding.queue),
                ]
            )
        expires_ms = _ms(queue.expires)
        await self._script(
            "DECLARE_QUEUE",
            [],
            [
                *self._common,
                queue.name,
                expires_ms,
                _ms(queue.message_ttl),
                orjson.dumps(members),
                max(2 * int(expires_ms or 0), 3_600_000),
            ],
        )
        if queue.expires is None and queue.message_ttl is None:
            self._plain.add(queue.name)
        else:
            self._plain.discard(queue.name)
        fanout = [b for b in bindings if types[b.exchange] == "fanout"]
        if fanout:
            await self._subscribe_fanout(queue.name, [(b.exchange, b.routing_key) for b in fanout])

    async def _subscribe_fanout(self, queue: str, bindings: list[tuple[str, str]]) -> None:
        if queue not in self._fanout:
            self._fanout[queue] = FanoutBuffer(queue, self.settings.fanout_buffer_limit)
        patterns: list[str] = []
        for exchange, key in bindings:
            routes = self._fanout_routes.setdefault(exchange, [])
            if (key, queue) not in routes:
                routes.append((key, queue))
            patterns.extend(self.layout.fanout_patterns(exchange, key))
        await self._psubscribe(patterns)

    async def _psubscribe(self, patterns: list[str]) -> None:
        """Listen to fanout channels; those an ACL refuses are said once each and left
        (the queues' other messages still flow)."""
        assert self._subscriber is not None
        refused = await self._refused(self._subscriber.psubscribe, patterns)
        new = [p for p in refused if ("fanout", p) not in self._said]
        if new:
            self._said.update(("fanout", p) for p in new)
            logger.warning(
                "broker %s refused to subscribe to fanout channels %s: broadcasts "
                "(remote control, events) on them do not reach this connection's queues; "
                "allow this user those channels",
                self._where,
                ", ".join(new),
            )

    async def _refused(
        self, listen: Callable[..., Awaitable[Any]], names: list[str]
    ) -> list[str]:
        """``listen(*names)``; the names an ACL refuses. Redis refuses a whole
        (P)SUBSCRIBE for one refused name, so after a refusal each is tried alone."""
        try:
            await self._listen(listen, names)
            return []
        except _Refused:
            if len(names) == 1:
                return names
        return [n for name in names for n in await self._refused(listen, [name])]

    async def _listen(self, listen: Callable[..., Awaitable[Any]], names: list[str]) -> None:
        """``listen(*names)`` (a subscriber's (p)subscribe) with celeriac's errors; an
        ACL's refusal raises :class:`_Refused`."""
        try:
            with self._map_errors():
                await listen(*names)
        except BrokerConnectionError as exc:
            if isinstance(exc.__cause__, redis_errors.NoPermissionError):
                raise _Refused(exc.__cause__) from exc
            raise

    async def delete_queue(self, name: str) -> None:
        self._plain.discard(name)
        await self._script("DELETE_QUEUE", [], [*self._common, name])
        self._fanout.pop(name, None)
        for routes in self._fanout_routes.values():
            routes[:] = [r for r in routes if r[1] != name]

    # -- publishing --------------------------------------------------------------------

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        self._require()
        if not batch:
            return
        for out in batch:
            check_outgoing(out)
        if all(self._is_plain(out) for out in batch):
            await self._push_plain_many(batch)
            return
        types = await self._exchange_types({o.exchange for o in batch if o.exchange})
        args, fanout_only = self._publish_args(batch, types)
        client = self._require()
        if fanout_only:
            # Fanout only (event packs, broadcasts): plain PUBLISH, without the script's
            # per-call cost in Redis, which shares the worker's cores.
            with self._map_errors():
                for reply in await self._pipeline([("PUBLISH", a[7], a[6]) for a in args]):
                    if isinstance(reply, Exception):
                        raise reply
            return
        script = self._scripts["PUBLISH"]
        head = self._publish_head
        with self._map_errors():
            if len(args) <= PUBLISH_CHUNK:
                replies = [
                    await script(keys=[], args=[*head, len(args), *_flat(args)], client=client)
                ]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for start in range(0, len(args), PUBLISH_CHUNK):
                        chunk = args[start : start + PUBLISH_CHUNK]
                        await script(
                            keys=[], args=[*head, len(chunk), *_flat(chunk)], client=pipe
                        )
                    replies = await pipe.execute()
        if _DOORBELL_REFUSED in replies:
            self._doorbell_refused(_refusal)

    def publish_sync(self, batch: Sequence[Outgoing]) -> bool:
        """Publish from sync code over a blocking connection, when that can be done plainly:
        no TLS or Sentinel, exchanges already known here, not only fanout (see
        :mod:`._redis_sync`). False means nothing was stored; use :meth:`publish`."""
        publisher = self._sync
        if publisher is None or not batch or len(batch) > PUBLISH_CHUNK or not self.is_connected:
            return False
        if len(batch) == 1 and self._is_plain(batch[0]):
            out = batch[0]
            check_outgoing(out)
            args = self._push_args(out)
            queue = out.routing_key
            if queue in self._offers_out:
                # No polling for the reply: the script may hand the message to a
                # waiting worker, whose wake-up needs the CPU the poll would hold (2 cores:
                # delay().get() p50 about 20 us shorter; polling is what makes a
                # delay() with no worker waiting fast, and that path keeps it).
                reply = publisher.run_script("PUSH", args, poll=False)
                if reply is None:
                    return False
                self._pushed(queue, reply)
            else:
                replies = publisher.run(self._push_commands(args))
                if replies is None:
                    return False
                self._pushed_plainly(queue, replies)
            return True
        types: dict[str, str] = {}
        for out in batch:
            check_outgoing(out)
            if out.exchange:
                kind = self._exchanges.get(out.exchange)
                if kind is None:
                    return False  # learning it needs a lookup: the async path does that
                types[out.exchange] = kind
        args, fanout_only = self._publish_args(batch, types)
        if fanout_only:
            return False
        reply = publisher.run_script("PUBLISH", [*self._publish_head, len(args), *_flat(args)])
        if reply == _DOORBELL_REFUSED:
            self._doorbell_refused(_refusal)
        return reply is not None

    def _is_plain(self, out: Outgoing) -> bool:
        """Whether the publish script would only push ``out`` and ring: an undelayed
        message through the default exchange to a plain queue (see ``_plain``)."""
        return not out.exchange and out.not_before is None and out.routing_key in self._plain

    def _push_commands(self, args: list[Any]) -> list[tuple[Any, ...]]:
        """A push to a queue no offer was seen on: pipelined, no script (the PUSH script's
        call cost a tenth of ``delay()``'s rate), asking whether offers are out now."""
        prefix, ready, queue, envelope, key = args[0], args[3], args[4], args[6], args[7]
        return [
            ("LPUSH", key, envelope),
            ("PUBLISH", ready + queue, ""),
            ("EXISTS", f"{prefix}_celeriac.offers.{queue}"),
        ]

    def _pushed(self, queue: str, reply: int) -> None:
        """What the PUSH script said: whether offers are out on ``queue`` (next pushes
        there take the script, which can hand off), and whether its doorbell was refused."""
        if reply % 10:
            self._offers_out.add(queue)
        else:
            self._offers_out.discard(queue)
        if reply >= 10:
            self._doorbell_refused(_refusal)

    def _pushed_plainly(self, queue: str, replies: list[Any]) -> None:
        """As :meth:`_pushed`, for the pipelined push (see ``_push_commands``)."""
        if replies[2] == 1:
            self._offers_out.add(queue)
        if isinstance(replies[1], Exception):
            self._doorbell_refused(replies[1])

    def _push_args(self, out: Outgoing) -> list[Any]:
        """The PUSH script's arguments for one message to a plain queue."""
        key, tag, envelope = self._plain_entry(out, {})
        return [*self._publish_head, out.routing_key, tag, envelope, key]

    async def _push_plain_many(self, batch: Sequence[Outgoing]) -> None:
        """Messages all bound for plain queues (see ``_plain``). One goes through the PUSH
        script, which can hand it to a waiting fetch. More are pushed with one ``LPUSH``
        per list and one doorbell per queue, pipelined, instead of a script's per-message
        work in Redis (about 5 us a message, against 1 for the push)."""
        if len(batch) == 1:
            args = self._push_args(batch[0])
            queue = batch[0].routing_key
            if queue in self._offers_out:
                self._pushed(queue, await self._script("PUSH", [], args))
                return
            with self._map_errors():
                replies = await self._pipeline(self._push_commands(args))
                if isinstance(replies[0], Exception):
                    raise replies[0]
            self._pushed_plainly(queue, replies)
            return
        lists: dict[str, list[bytes]] = {}
        keys: dict[tuple[str, int], str] = {}
        for out in batch:
            key, _, envelope = self._plain_entry(out, keys)
            lists.setdefault(key, []).append(envelope)
        bells = dict.fromkeys(self.layout.ready_prefix + queue for queue, _ in keys)
        commands: list[tuple[Any, ...]] = [
            ("LPUSH", key, *envelopes[start : start + PUBLISH_CHUNK])
            for key, envelopes in lists.items()
            for start in range(0, len(envelopes), PUBLISH_CHUNK)
        ]
        pushes = len(commands)
        commands += [("PUBLISH", bell, "") for bell in bells]
        with self._map_errors():
            replies = await self._pipeline(commands)
            for reply in replies[:pushes]:
                if isinstance(reply, Exception):
                    raise reply
        for reply in replies[pushes:]:
            if isinstance(reply, Exception):
                self._doorbell_refused(reply)
                break

    async def _pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Commands in one round trip, their replies in order with an error reply as its
        exception in place: over the link where there is one, else redis-py's pipeline."""
        client = self._require()
        link = self._link
        if link is not None:
            return await link.pipeline(commands)
        async with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return cast(list[Any], await pipe.execute(raise_on_error=False))

    def _say_once(self, what: str, message: str, *args: Any) -> None:
        """Warn of an ACL's refusal once per transport (it stays refused)."""
        if what not in self._said:
            self._said.add(what)
            logger.warning(message, self._where, *args)

    def _refused_late(self, exc: BaseException) -> None:
        """redis-py's subscriber learns of a refused channel only when it reads on; it
        cannot tell which (un)subscription it answers."""
        self._say_once(
            "channel",
            "broker %s refused to subscribe to a channel (%s): doorbells (new messages are "
            "found at the next poll, polling_interval) or broadcasts (remote control, "
            "events) on it do not arrive; allow this user the %s* and fanout channels",
            exc,
            self.layout.ready_prefix,
        )

    def _doorbell_refused(self, exc: BaseException) -> None:
        """The messages are stored; only the wake-up was refused (an ACL user without
        channel rights): workers find them at their next poll."""
        self._say_once(
            "doorbell publish",
            "broker %s refused a doorbell PUBLISH (%s): messages are stored, and workers "
            "find them at their next poll (polling_interval) instead of at once; allow "
            "this user to publish to %s* channels",
            exc,
            self.layout.ready_prefix,
        )

    def _plain_entry(
        self, out: Outgoing, keys: dict[tuple[str, int], str]
    ) -> tuple[str, str, bytes]:
        """The list a message for a plain queue goes to (looked up in ``keys``, the lists
        of a batch by queue and priority), its delivery tag and its envelope."""
        message = out.message
        priority = message_priority(message)
        queue = out.routing_key
        key = keys.get((queue, priority))
        if key is None:
            layout = self.layout
            key = keys[(queue, priority)] = layout.list_key(queue, layout.step(priority))
        tag = message.delivery_tag or uuid4_hex()
        return key, tag, _envelope(out, tag, priority, False)

    def _publish_args(
        self, batch: Sequence[Outgoing], types: Mapping[str, str]
    ) -> tuple[list[tuple[Any, ...]], bool]:
        """The publish script's fields of every message, and whether all are fanout."""
        layout = self.layout
        step_of: dict[int, int] = {}
        args: list[tuple[Any, ...]] = []
        fanout_only = True
        for out in batch:
            message = out.message
            priority = message_priority(message)
            step = step_of.get(priority)
            if step is None:
                step = step_of[priority] = layout.step(priority)
            tag = message.delivery_tag or uuid4_hex()
            kind = types[out.exchange] if out.exchange else "default"
            if kind == "headers":
                kind = "direct"
            envelope = _envelope(out, tag, priority, kind == "fanout")
            channel = ""
            if kind == "fanout":
                rk = out.routing_key if self.settings.fanout_patterns else ""
                channel = layout.fanout_channel(out.exchange, rk)
            else:
                fanout_only = False
            not_before = "" if out.not_before is None else repr(float(out.not_before))
            args.append(
                (kind, out.exchange, out.routing_key, tag, step, not_before, envelope, channel)
            )
        return args, fanout_only

    # -- fetching ----------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Message]:
        _check_fetch(queues, limit)
        self._require()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        subscriber = self._subscriber
        assert subscriber is not None
        names = list(queues)
        key = tuple(names)
        if key not in self._doorbells:
            bells = [self.layout.ready_prefix + q for q in names]
            try:
                await self._listen(subscriber.subscribe, bells)
            except _Refused as refused:  # fetches find new messages at their polls
                self._say_once(
                    "doorbells",
                    "broker %s refused to subscribe to doorbells (%s): workers find new "
                    "messages at their next poll (polling_interval) instead of at once; "
                    "allow this user the %s* channels",
                    refused,
                    self.layout.ready_prefix,
                )
            except BrokerConnectionError as exc:
                if self._client is None:
                    raise ConnectionClosedError(f"{self!r} was closed while fetching") from exc
                raise
            if len(self._doorbells) > 64:
                self._doorbells.clear()
            self._doorbells.add(key)
        if not (self._offering or self._offers_refused or self._closing) and isinstance(
            subscriber, LinkSubscriber
        ):
            await self._start_offering(subscriber)
        while True:
            if self._client is None:
                raise ConnectionClosedError(f"{self!r} was closed while fetching")
            # looked up each time round: bells evicted while this fetch waited (over 64
            # queue sets) were rung, and the fresh one is what doorbells ring now
            bell = self._bell_for(key)
            event = bell.event
            event.clear()  # what woke us is in the state checked below
            if bell is not self._last_bell:
                self._last_bell = bell
                if self._offering:
                    self._supersede(bell, loop.time())
            if self._handoffs:
                handed = self._take_handoffs(names, limit)
                if handed:  # at once: a claim now would cost what the hand-off saved
                    return handed
            await self._maybe_restore()
            out = self._take_fanout(names, limit)
            wanted = limit - len(out)
            if wanted > 0 and (bell.due or loop.time() >= bell.idle_until):
                # cleared before the claim: a doorbell during the claim is kept
                bell.due = False
                withdraw, self._withdraw = self._withdraw, []
                if bell.offered_until > loop.time():  # its own offer may still be out
                    withdraw.append(bell.offer)
                    bell.offered_until = 0.0
                claimed, due = await self._claim(names, wanted, bell.offer, withdraw)
                out.extend(claimed)
                if len(claimed) < wanted:  # the lists are empty: wait for the bell
                    if self._offering:
                        bell.offered_until = loop.time() + self._offer_life
                    idle = self.settings.polling_interval
                    bell.idle_until = loop.time() + (idle if due is None else min(idle, due))
                else:
                    bell.idle_until = 0.0
            if out:
                return out
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                return out
            wait = min(remaining, bell.idle_until - now, self._next_restore - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.001)):
                    await event.wait()
            if not self._holds_handoffs(names):  # (claims: taken even from a broken link)
                self._require()  # closed or broken while waiting: say so

    def _order(self, names: list[str]) -> list[str]:
        strategy = self.settings.queue_order_strategy
        if strategy == "sorted":
            return sorted(names)
        if strategy == "priority" or len(names) == 1:
            return names
        start = self._rotation % len(names)
        self._rotation += 1
        return names[start:] + names[:start]

    async def _start_offering(self, subscriber: LinkSubscriber) -> None:
        """Listen for hand-offs; refused (an ACL), fetches claim as before."""
        try:
            await self._listen(subscriber.subscribe, [self._handoff_channel])
        except _Refused as refused:
            self._offers_refused = True
            if "doorbells" in self._said:  # no channel rights at all: said already
                return
            self._say_once(
                "hand-offs",
                "broker %s refused to subscribe to %s (%s): idle workers claim each new "
                "message after its doorbell instead of receiving it with the publish; "
                "allow this user the %s* channels",
                self._handoff_channel,
                refused,
                f"{self.layout.prefix}_celeriac.handoff.",
            )
            return
        self._offering = True

    def _supersede(self, bell: _Bell, now: float) -> None:
        """A fetch of a new set of queues, sharing some with another set whose offer may
        still be out: the consumer's queues changed (a queue was added or cancelled), so
        that offer goes with this fetch's next claim, which comes at once. (Disjoint sets,
        such as the control consumer's, are left.)"""
        for other in self._bells.values():
            if (
                other is not bell
                and other.offered_until > now
                and not other.names.isdisjoint(bell.names)
            ):
                other.offered_until = 0.0
                self._withdraw.append(other.offer)
                bell.due = True

    async def _claim(
        self, names: list[str], limit: int, offer: str = "", withdraw: Sequence[str] = ()
    ) -> tuple[list[Message], float | None]:
        order = self._order(names)
        settings = self.settings
        # The served-by-celeriac mark lives PRESENCE_SECONDS; renewing it on every claim
        # cost a write per claim, so it is renewed every PRESENCE_REFRESH seconds.
        now = time.monotonic()
        served = tuple(names)
        present = self._presence_due.get(served, 0.0) <= now
        if present:
            if len(self._presence_due) > 64:
                self._presence_due.clear()
            self._presence_due[served] = now + scripts.PRESENCE_REFRESH
        reply = await self._script(
            "CLAIM",
            self._unacked_keys,
            [
                *self._common,
                limit,
                repr(self.visibility_timeout),
                int(settings.delivery_record_ttl),
                len(order),
                "1" if present else "",
                offer if self._offering else "",
                self._handoff_channel,
                repr(self._offer_life),
                " ".join(withdraw),
                *order,
            ],
        )
        next_due = float(reply[0]) if reply[0] else None
        if reply[1]:
            logger.info("dropped %d message(s) that outlived their queue's message_ttl", reply[1])
        messages = []
        step_of = self.layout.step
        for i in range(2, len(reply), 3):
            queue = reply[i].decode()
            token = str(reply[i + 1])
            raw = reply[i + 2]
            message = decode_envelope(raw, queue, int(reply[i + 1]), None)
            tag = message.delivery_tag or ""
            message.receipt = _Claim(tag, token, queue, step_of(_priority_of(message)), raw)
            messages.append(message)
        return messages, next_due

    def _take_fanout(self, names: list[str], limit: int) -> list[Message]:
        out: list[Message] = []
        for name in names:
            buffer = self._fanout.get(name)
            if buffer is None or not buffer:
                continue
            for raw, count in buffer.take(limit - len(out)):
                message = decode_envelope(raw, name, count, None)
                message.receipt = _FanoutReceipt(name, raw, count)
                out.append(message)
            if len(out) >= limit:
                break
        return out

    # -- settling ----------------------------------------------------------------------

    async def ack(self, messages: Sequence[Message]) -> None:
        claims = [c for c in _receipts(self, messages) if isinstance(c, _Claim)]
        if claims:
            args = [self.layout.prefix]
            for c in claims:
                args += [c.tag, c.token]
            await self._script("ACK", self._unacked_keys, args)

    async def reject(self, messages: Sequence[Message], requeue: bool) -> None:
        receipts = _receipts(self, messages)
        if not requeue:
            await self.ack(messages)
            return
        claims: list[_Claim] = []
        for receipt in receipts:
            if isinstance(receipt, _FanoutReceipt):
                buffer = self._fanout.get(receipt.queue)
                if buffer is not None:
                    buffer.push(receipt.raw, front=True, count=receipt.count + 1)
                    self._ring(receipt.queue, due=False)
            else:
                claims.append(receipt)
        if claims:
            await self._requeue(claims)

    async def _requeue(self, claims: Sequence[_Claim]) -> None:
        args: list[Any] = [self.layout.prefix, self.layout.ready_prefix]
        for c in claims:
            args += [c.tag, c.token, self.layout.list_key(c.queue, c.step), c.queue, c.raw]
        await self._script("REQUEUE", self._unacked_keys, args)

    async def extend(self, messages: Sequence[Message], seconds: float | None = None) -> None:
        claims = [c for c in _receipts(self, messages) if isinstance(c, _Claim)]
        if not claims:
            return
        secs = self.visibility_timeout if seconds is None else float(seconds)
        args: list[Any] = [
            self.layout.prefix,
            repr(secs),
            repr(self.visibility_timeout),
            int(self.settings.delivery_record_ttl),
        ]
        for c in claims:
            args += [c.tag, c.token]
        await self._script("EXTEND", self._unacked_keys, args)

    # -- restoring lost claims -----------------------------------------------------------

    async def _maybe_restore(self) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._next_restore:
            return
        self._next_restore = now + self.settings.restore_interval
        if await self.restore_unacked():
            self._ring_all()  # what came back is worth a claim now

    async def restore_unacked(self) -> int:
        """Return every claim whose lease passed (and kombu claims past the visibility
        timeout) to the front of its queue; return how many. Runs under kombu's
        ``unacked_mutex``, so one process restores at a time, Celery workers included.
        """
        layout = self.layout
        keys = [*self._unacked_keys, layout.unacked_mutex]
        token = uuid.uuid4().hex
        due = await self._script(
            "RESTORE_SCAN",
            keys,
            [
                *self._common,
                repr(self.visibility_timeout),
                self.settings.unacked_restore_limit,
                token,
                int(self.settings.unacked_mutex_expire * 1000),
            ],
        )
        if not due:
            return 0
        try:
            args: list[Any] = [layout.prefix, layout.ready_prefix, token]
            for i in range(0, len(due), 3):
                tag, score, entry = due[i].decode(), due[i + 1], due[i + 2]
                envelope, targets = await self._restore_targets(tag, entry)
                args += [tag, score, envelope, len(targets)]
                for list_key, queue in targets:
                    args += [list_key, queue]
            restored = int(await self._script("RESTORE", keys, args))
        except BaseException:
            with contextlib.suppress(Exception):
                await self._script("RELEASE_MUTEX", [layout.unacked_mutex], [token])
            raise
        if restored:
            logger.warning(
                "restored %d unacknowledged message(s) whose holder's lease passed", restored
            )
        return restored

    async def _restore_targets(self, tag: str, entry: bytes) -> tuple[Any, list[tuple[str, str]]]:
        """Where an unacked entry goes back to, as kombu resolves it."""
        layout = self.layout
        try:
            envelope, exchange, routing_key, priority, _ = mark_redelivered(entry)
        except ValueError as exc:
            logger.error("unacked entry %s is unreadable (%s): quarantined", tag, exc)
            return entry, [(layout.list_key(QUARANTINE_QUEUE), QUARANTINE_QUEUE)]
        step = layout.step(priority)
        if not exchange:
            return envelope, [(layout.list_key(routing_key, step), routing_key)]
        client = self._require()
        with self._map_errors():
            members = await client.smembers(layout.binding_key(exchange))
        kind = self._exchanges.get(exchange, "direct")
        queues: dict[str, None] = {}
        for raw in members:
            parsed = layout.parse_member(raw.decode("utf-8", "replace"))
            if parsed is None:
                continue
            key, pattern, queue = parsed
            if kind == "fanout" or (
                topic_matches(key, routing_key)
                if (pattern or kind == "topic")
                else key == routing_key
            ):
                queues[queue] = None
        if not queues:
            logger.error(
                "unacked message %s routes nowhere any more (exchange %r, routing key %r): "
                "quarantined",
                tag,
                exchange,
                routing_key,
            )
            queues[QUARANTINE_QUEUE] = None
        return envelope, [(layout.list_key(q, step), q) for q in queues]

    # -- queue state -------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        client = self._require()
        keys = [*self.layout.list_keys(queue), self.layout.delayed_key(queue)]
        with self._map_errors():
            async with client.pipeline(transaction=True) as pipe:
                for key in keys[:-1]:
                    pipe.llen(key)
                pipe.zcard(keys[-1])
                pipe.delete(*keys, self.layout.ttl_key(queue))
                counts = await pipe.execute()
        buffered = 0
        buffer = self._fanout.get(queue)
        if buffer is not None:
            buffered = len(buffer)
            buffer.items.clear()
        return sum(counts[:-1]) + buffered

    async def queue_length(self, queue: str) -> int:
        client = self._require()
        buffer = self._fanout.get(queue)
        if buffer is not None and self._subscriber is not None:
            with self._map_errors():
                await self._subscriber.sync()
        with self._map_errors():
            async with client.pipeline(transaction=False) as pipe:
                for key in self.layout.list_keys(queue):
                    pipe.llen(key)
                pipe.zcard(self.layout.delayed_key(queue))
                counts = await pipe.execute()
        return sum(counts) + (len(buffer) if buffer is not None else 0)


def _fanout_accepts(binding_key: str, routing_key: str) -> bool:
    """kombu's fanout patterns: a wildcard binding filters, any other takes everything."""
    if "*" in binding_key or "#" in binding_key:
        return topic_matches(binding_key, routing_key)
    return True


def _priority_of(message: Message) -> int:
    try:
        return int(message.properties.get("priority") or 0)
    except (TypeError, ValueError):
        return 0


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else str(max(1, round(seconds * 1000)))


def _envelope(out: Outgoing, tag: str, priority: int, text_body: bool) -> bytes:
    """kombu's envelope of an outgoing message; an unserialisable header names it."""
    try:
        return encode_envelope(out.message, out.exchange, out.routing_key, tag, priority, text_body)
    except TypeError as exc:
        raise TypeError(f"{out.message!r}: {exc}") from None


def _flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    """The PUBLISH script's arguments: a row going where the row before it went is sent
    as one ``=tag|envelope`` argument (a bulk publish to one queue passes one argument a
    message, not 8: redis-py's packing of each argument was a third of the publish)."""
    out: list[Any] = []
    append = out.append
    k = x = r = s = n = c = None  # where the row before went
    for row in rows:
        kind, exchange, rk, tag, step, nb, envelope, channel = row
        if (
            kind == k and exchange == x and rk == r and step == s and nb == n and channel == c
        ) and "|" not in tag:
            append(b"=" + tag.encode() + b"|" + envelope)
        else:
            out += row
            k, x, r, s, n, c = kind, exchange, rk, step, nb, channel
    return out


class _Refused(Exception):
    """An ACL refused a subscription."""


#: The PUBLISH script's reply when the messages were stored but a doorbell refused.
_DOORBELL_REFUSED = 3
_refusal = _Refused("PUBLISH to the doorbell channel (NOPERM)")


def _receipts(transport: RedisTransport, messages: Sequence[Message]) -> list[Any]:
    out = []
    for m in messages:
        receipt = m.receipt
        if not isinstance(receipt, _Claim | _FanoutReceipt):
            raise ValueError(
                f"{m!r} was not delivered by a redis:// transport (receipt {receipt!r}); "
                "only fetched messages can be settled or extended"
            )
        out.append(receipt)
    transport._require()
    return out
