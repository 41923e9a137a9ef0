"""Receiving events: a private queue on the events exchange, decoded, unpacked and dispatched.

An :class:`EventReceiver` declares a queue of its own (``celeryev.<uuid>``) bound to the
events exchange with its ``routing_key`` (``#`` for everything, ``task.#`` for task
events), claims messages in batches, unpacks batched messages (a JSON list, as Celery's
``task.multi``), fixes up each event the way Celery's receiver does, and calls
``handlers[type]``, falling back to ``handlers["*"]``:

* ``local_received`` is set to the receipt time;
* the Lamport clock is adjusted from the event's clock; a ``task-sent`` event (clients do
  not keep clocks in step) gets the receiver's clock instead;
* ``timestamp`` is moved into the local zone when the sender's ``utcoffset`` differs.

The queue is declared with Celery's event queue arguments (``expires`` 60 s, message TTL
5 s), so a receiver that goes away does not leave a queue filling up behind it. Broken
connections are reconnected by :meth:`Connection.retrying`, which also declares the queue
again (on Redis: subscribes again); events published while disconnected are lost, as on
any broker's fanout.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import BrokerConnectionError, ConnectionClosedError, DecodeError
from ..messaging.entities import Queue
from ..messaging.message import Message
from ..messaging.transports.base import Transport
from ..serialization import loads
from ..utils.time import utcoffset as local_utcoffset
from .clock import LamportClock
from .dispatcher import DEFAULT_EXCHANGE_NAME, event_exchange
from .payloads import Event

if TYPE_CHECKING:
    from ..messaging.connection import Connection

__all__ = ["EventReceiver", "Handler", "fix_event"]

logger = logging.getLogger("celeriac.events")

Handler = Callable[[Event], Any]

#: Events claimed per broker call.
FETCH_LIMIT = 1000
#: Longest single wait for events (s); :meth:`EventReceiver.stop` acts within this.
FETCH_SLICE = 0.5
#: Pause (s) before trying again after the broker stayed unreachable.
RECONNECT_PAUSE = 1.0


def fix_event(
    event: Event, clock: LamportClock, received: float, local_offset: int | None = None
) -> Event:
    """Add ``local_received``, adjust the clock, localize the timestamp (in place)."""
    event["local_received"] = received
    if event.get("type") == "task-sent":
        # Clients do not synchronise clocks: place the event at the receiver's clock.
        value = (clock.value or 1) - 1
        event["clock"] = value
        clock.adjust(value)
    else:
        value = event.get("clock")
        if isinstance(value, int):
            clock.adjust(value)
        else:
            event["clock"] = clock.forward()
    offset = event.get("utcoffset")
    timestamp = event.get("timestamp")
    if isinstance(offset, int | float) and isinstance(timestamp, int | float):
        here = local_utcoffset() if local_offset is None else local_offset
        if offset != here:
            event["timestamp"] = timestamp - (offset - here) * 3600
    return event


class EventReceiver:
    """Consumes events and hands each to a handler (see the module docstring).

    Args:
        connection: The broker connection (connected on first use).
        handlers: Event type -> callable taking the event dict; ``"*"`` catches the rest.
        routing_key: Binding key on the events exchange (``#``: everything).
        node_id: Suffix of the queue name (a random one by default).
        exchange: The events exchange name.
        queue_prefix: Queue names are ``<prefix>.<node_id>``.
        queue_ttl: Seconds an event may wait in the queue before the broker drops it.
        queue_expires: Seconds after which the broker deletes the queue if unused.
        accept: Content types accepted for event bodies.
        clock: The Lamport clock to adjust (a fresh one by default).
    """

    def __init__(
        self,
        connection: Connection,
        handlers: Mapping[str, Handler] | None = None,
        routing_key: str = "#",
        *,
        node_id: str | None = None,
        exchange: str = DEFAULT_EXCHANGE_NAME,
        queue_prefix: str = "celeryev",
        queue_ttl: float | None = 5.0,
        queue_expires: float | None = 60.0,
        accept: Collection[str] = ("json",),
        clock: LamportClock | None = None,
    ) -> None:
        self.connection = connection
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.routing_key = routing_key
        self.node_id = node_id or uuid.uuid4().hex
        self.clock = clock if clock is not None else LamportClock()
        self.accept = tuple(accept)
        self.exchange = event_exchange(connection.transport, exchange)
        self.queue = Queue(
            f"{queue_prefix}.{self.node_id}",
            self.exchange,
            routing_key,
            durable=False,
            auto_delete=True,
            expires=queue_expires,
            message_ttl=queue_ttl,
        )
        self.local_offset = local_utcoffset()
        self._declared_generation = -1
        self._stopping = False
        #: Events handled since creation.
        self.received = 0
        #: Messages that could not be decoded (logged and skipped).
        self.invalid = 0

    def __repr__(self) -> str:
        return f"<EventReceiver {self.queue.name} key={self.routing_key!r}>"

    # -- set-up ----------------------------------------------------------------------------

    async def declare(self) -> None:
        """Connect and declare the queue (capture does this itself; call it to be sure no
        event published after this returns is missed)."""
        await self.connection.connect()
        await self.connection.declare(self.exchange, self.queue)
        self._declared_generation = self.connection.generation

    def stop(self) -> None:
        """Make a running :meth:`capture` return within a fraction of a second."""
        self._stopping = True

    @property
    def should_stop(self) -> bool:
        return self._stopping

    # -- consuming -------------------------------------------------------------------------

    async def capture(self, limit: int | None = None, timeout: float | None = None) -> int:
        """Handle events until ``limit`` were handled, ``timeout`` seconds passed, or
        :meth:`stop` was called; returns how many were handled.

        Raises:
            ConnectionClosedError: the connection was closed under it.
        """
        count = 0
        async for event in self.itercapture(limit=limit, timeout=timeout):
            self.process(event)
            count += 1
        return count

    async def itercapture(
        self, limit: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """The events themselves, fixed up, as they arrive (no handlers are called)."""
        self._stopping = False
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        count = 0
        if self._declared_generation < 0:
            await self._declare_retrying(deadline)
        name = self.queue.name
        while not self._stopping:
            remaining = FETCH_SLICE if deadline is None else deadline - loop.time()
            if remaining <= 0:
                return
            want = FETCH_LIMIT if limit is None else min(FETCH_LIMIT, limit - count)
            wait = min(remaining, FETCH_SLICE)

            async def fetch(
                transport: Transport, want: int = want, wait: float = wait
            ) -> list[Message]:
                return await transport.fetch([name], want, wait)

            try:
                messages = await self.connection.retrying(fetch)
            except ConnectionClosedError:
                raise
            except BrokerConnectionError as exc:
                if self._stopping:
                    return
                logger.warning("event receiver: broker unreachable (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_PAUSE)
                continue
            if not messages:
                continue
            received = time.time()
            await self._ack(messages)
            for message in messages:
                for event in self._decode(message, received):
                    yield event
                    count += 1
                    if limit is not None and count >= limit:
                        return

    async def _declare_retrying(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.declare()
                return
            except ConnectionClosedError:
                raise
            except BrokerConnectionError as exc:
                if deadline is not None and loop.time() >= deadline:
                    raise
                logger.warning("event receiver: cannot declare its queue (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_PAUSE)

    async def _ack(self, messages: list[Message]) -> None:
        async def ack(transport: Transport) -> None:
            await transport.ack(messages)

        try:
            await self.connection.retrying(ack)
        except BrokerConnectionError as exc:  # they expire with the queue's TTL anyway
            logger.debug("event receiver: ack failed: %r", exc)

    def _decode(self, message: Message, received: float) -> list[Event]:
        try:
            body = loads(message.body, message.content_type, message.content_encoding, self.accept)
        except DecodeError as exc:
            self.invalid += 1
            logger.warning("event receiver: skipped an undecodable event message: %s", exc)
            return []
        items = body if isinstance(body, list) else [body]
        events = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                events.append(fix_event(item, self.clock, received, self.local_offset))
            else:
                self.invalid += 1
        return events

    def process(self, event: Event) -> None:
        """Call the handler for the event's type, or the ``"*"`` handler."""
        self.received += 1
        handler = self.handlers.get(event["type"]) or self.handlers.get("*")
        if handler is not None:
            handler(event)
