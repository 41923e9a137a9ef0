"""Sending events: stamped, filtered by group, coalesced per loop iteration, kept while offline.

:meth:`EventDispatcher.send` never waits for the broker. It stamps the event (type, node
name, timestamp, UTC offset, pid, Lamport clock) and queues it; everything queued during
one event-loop iteration goes to the broker in **one** transport call at the end of that
iteration, the way the worker writes acks and results. Events of a group named in
``buffer_group`` (the worker buffers ``task``) are packed into one message whose body is a
JSON list, routed ``<group>.multi``, as Celery's workers send ``task.multi``; a pack is
closed when it holds ``buffer_limit`` events or when the iteration ends.

When the broker cannot be reached the events wait in a bounded outbound buffer
(``buffer_while_offline``) and go out after the next successful reconnect; past
``offline_limit`` the oldest are dropped and counted, since an event stream must never
grow a worker's memory without bound.

The exchange is ``celeryev``: a topic exchange, except on transports whose
``event_exchange_type`` says otherwise (Redis: fanout over PUB/SUB, as Celery has it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..messaging.entities import Exchange
from ..messaging.message import Message
from ..messaging.transports.base import Outgoing, Transport
from ..serialization import dumps
from ..utils.nodenames import gen_nodename
from ..utils.time import utcoffset as local_utcoffset
from .clock import LamportClock
from .payloads import Event

if TYPE_CHECKING:
    from ..messaging.connection import Connection

__all__ = [
    "EventDispatcher",
    "DispatcherStatistics",
    "event_exchange",
    "group_from",
    "routing_key_for",
    "DEFAULT_EXCHANGE_NAME",
]

logger = logging.getLogger("celeriac.events")

#: Event type -> group (``task-succeeded`` -> ``task``), filled as types are seen.
_GROUPS: dict[str, str] = {}
_time = time.time

#: Celery's ``event_exchange``.
DEFAULT_EXCHANGE_NAME = "celeryev"
#: Events per packed message before the pack is closed (Celery's worker uses 24).
DEFAULT_BUFFER_LIMIT = 24
#: Most events kept while the broker is unreachable; older ones are dropped beyond this.
DEFAULT_OFFLINE_LIMIT = 10_000


def event_exchange(
    transport: Transport | type[Transport], name: str = DEFAULT_EXCHANGE_NAME
) -> Exchange:
    """The events exchange with the type the transport uses for it (topic or fanout)."""
    kind = getattr(transport, "event_exchange_type", "topic")
    return Exchange(name, kind, durable=True, auto_delete=False)


def group_from(event_type: str) -> str:
    """The group of an event type: the part before the first ``-`` (``task-sent`` -> ``task``)."""
    return event_type.split("-", 1)[0]


def routing_key_for(event_type: str) -> str:
    """``task-succeeded`` -> ``task.succeeded``."""
    return event_type.replace("-", ".")


@dataclass(frozen=True, slots=True)
class DispatcherStatistics:
    """What :meth:`EventDispatcher.statistics` reports."""

    #: Events stamped and accepted for sending.
    sent: int
    #: Broker calls made (each may carry many events).
    publishes: int
    #: Events waiting for the broker to come back.
    offline: int
    #: Events dropped because the offline buffer was full.
    dropped: int
    #: Events filtered out by ``groups`` or because the dispatcher was disabled.
    filtered: int


class EventDispatcher:
    """Stamps and publishes events (see the module docstring).

    Args:
        connection: Where to publish; may be None and attached later with :meth:`attach`
            (events sent meanwhile wait in the offline buffer).
        hostname: The sender's node name; a client's ``gen<pid>@host`` by default.
        enabled: When False, :meth:`send` drops everything until :meth:`enable`.
        groups: Groups to send (``{"task", "worker"}``); None sends every group.
        buffer_group: Groups whose events are packed into one message per iteration.
        buffer_limit: Events per packed message.
        buffer_while_offline: Keep events while the broker is unreachable (else drop them).
        offline_limit: Most events kept while offline.
        exchange: The events exchange name.
        serializer: Codec for event bodies (Celery's ``event_serializer``, ``json``).
        clock: The node's Lamport clock (shared with the rest of the node).
        on_enabled: Called after :meth:`enable`.
        on_disabled: Called after :meth:`disable`.
        flush_interval: Seconds between the end of one publish and the start of the next:
            a busy node's events then travel in fewer, fuller messages (a worker uses a
            few milliseconds). 0 publishes at the end of every loop iteration.
    """

    def __init__(
        self,
        connection: Connection | None = None,
        hostname: str | None = None,
        *,
        enabled: bool = True,
        groups: Iterable[str] | None = None,
        buffer_group: Iterable[str] | None = None,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        buffer_while_offline: bool = True,
        offline_limit: int = DEFAULT_OFFLINE_LIMIT,
        exchange: str = DEFAULT_EXCHANGE_NAME,
        serializer: str = "json",
        clock: LamportClock | None = None,
        on_enabled: Iterable[Callable[[], None]] = (),
        on_disabled: Iterable[Callable[[], None]] = (),
        flush_interval: float = 0.0,
    ) -> None:
        if buffer_limit < 1:
            raise ValueError(f"buffer_limit must be >= 1, got {buffer_limit!r}")
        if offline_limit < 0:
            raise ValueError(f"offline_limit must be >= 0, got {offline_limit!r}")
        self.hostname = hostname or gen_nodename()
        self.groups: frozenset[str] | None = frozenset(groups) if groups is not None else None
        self.buffer_group: frozenset[str] = frozenset(buffer_group or ())
        self.buffer_limit = buffer_limit
        self.flush_interval = max(0.0, float(flush_interval))
        self.buffer_while_offline = buffer_while_offline
        self.offline_limit = offline_limit
        self.exchange_name = exchange
        self.serializer = serializer
        self.clock = clock if clock is not None else LamportClock()
        self.on_enabled: list[Callable[[], None]] = list(on_enabled)
        self.on_disabled: list[Callable[[], None]] = list(on_disabled)
        self.enabled = enabled
        self.pid = os.getpid()
        self.utcoffset = local_utcoffset()
        self.connection: Connection | None = None
        self.exchange: Exchange | None = None
        self._headers = {"hostname": self.hostname}
        #: Messages ready to publish at the end of this iteration.
        self._pending: list[Outgoing] = []
        #: Per buffered group: events waiting to be packed.
        self._packs: dict[str, list[Event]] = {}
        self._offline: deque[Outgoing] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        self._sent = 0
        self._publishes = 0
        self._dropped = 0
        self._filtered = 0
        if connection is not None:
            self._bind(connection)

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        where = self.connection.as_uri() if self.connection is not None else "unattached"
        return f"<EventDispatcher {self.hostname} {state} {where}>"

    # -- wiring ----------------------------------------------------------------------------

    def _bind(self, connection: Connection) -> None:
        if self.connection is not None and self._on_reconnect in self.connection.on_reconnect:
            self.connection.on_reconnect.remove(self._on_reconnect)
        self.connection = connection
        self.exchange = event_exchange(connection.transport, self.exchange_name)
        connection.on_reconnect.append(self._on_reconnect)

    async def attach(self, connection: Connection | None = None) -> None:
        """Declare the events exchange on ``connection`` (or the current one) and send
        whatever waited while there was none."""
        if connection is not None:
            self._bind(connection)
        if self.connection is None:
            raise RuntimeError("EventDispatcher.attach() needs a connection")
        self._loop = asyncio.get_running_loop()
        assert self.exchange is not None
        await self.connection.declare(self.exchange)
        if self._offline:
            self._schedule()
        await self.flush()

    def detach(self) -> None:
        """Forget the connection (it is closing); later events wait in the offline buffer."""
        if self.connection is not None and self._on_reconnect in self.connection.on_reconnect:
            self.connection.on_reconnect.remove(self._on_reconnect)
        self.connection = None

    def _on_reconnect(self) -> None:
        if self._offline:
            self._schedule()

    # -- switching -------------------------------------------------------------------------

    def enable(self) -> None:
        self.enabled = True
        for callback in self.on_enabled:
            callback()

    def disable(self) -> None:
        self.enabled = False
        for callback in self.on_disabled:
            callback()

    # -- sending ---------------------------------------------------------------------------

    def stamp(self, type: str, fields: Mapping[str, Any], blind: bool = False) -> Event:
        """The event as it travels: ``fields`` plus the common fields.

        ``blind`` events carry no clock (``clock`` is None) and do not advance it.
        """
        return self._stamp_in_place(type, dict(fields), blind)

    def _stamp_in_place(self, type: str, event: Any, blind: bool) -> Event:
        """:meth:`stamp` on a dict this dispatcher owns (``send``'s keyword arguments)."""
        event["hostname"] = self.hostname
        event["utcoffset"] = self.utcoffset
        event["pid"] = self.pid
        event["clock"] = None if blind else self.clock.forward()
        event["timestamp"] = time.time()
        event["type"] = type
        return event  # type: ignore[no-any-return]

    def send(self, type: str, *, blind: bool = False, **fields: Any) -> Event | None:
        """Queue one event for this loop iteration's publish; returns it, or None if dropped.

        Call it on the event loop the connection belongs to. Dropped when disabled or when
        the event's group is not in ``groups``.
        """
        if not self.enabled:
            self._filtered += 1
            return None
        group = _GROUPS.get(type)
        if group is None:
            group = _GROUPS[type] = type.split("-", 1)[0]
        if self.groups is not None and group not in self.groups:
            self._filtered += 1
            return None
        # _stamp_in_place, inlined: this runs for every event a worker sends
        fields["hostname"] = self.hostname
        fields["utcoffset"] = self.utcoffset
        fields["pid"] = self.pid
        fields["clock"] = None if blind else self.clock.forward()
        fields["timestamp"] = _time()
        fields["type"] = type
        event: Event = fields  # type: ignore[assignment]
        self._sent += 1
        if group in self.buffer_group:
            pack = self._packs.get(group)
            if pack is None:
                pack = self._packs[group] = []
            pack.append(event)
            if len(pack) >= self.buffer_limit:
                self._close_pack(group)
        else:
            pending = self._pending
            pending.append(self.outgoing(event))
            if len(pending) > self.offline_limit:  # a publish is stuck: keep the newest
                del pending[0]
                self._dropped += 1
        if not self._scheduled:
            self._schedule()
        return event

    def outgoing(self, body: Event | list[Event], routing_key: str | None = None) -> Outgoing:
        """One event (or a pack of them) as a message to publish on the events exchange."""
        if routing_key is None:
            assert isinstance(body, dict)
            routing_key = routing_key_for(body["type"])
        if self.serializer == "json":
            try:
                # Events are plain values we built (no UUID or datetime objects): skip the
                # general encoder's scan for UUID-looking strings, which every event's
                # ``uuid`` field would trigger.
                data = orjson.dumps(body)
                content_type, encoding = "application/json", "utf-8"
            except TypeError:
                content_type, encoding, data = dumps(body, self.serializer)
        else:
            content_type, encoding, data = dumps(body, self.serializer)
        message = Message(
            data,
            headers=dict(self._headers),
            properties={"delivery_mode": 1},
            content_type=content_type,
            content_encoding=encoding,
        )
        return Outgoing(message, self.exchange_name, routing_key)

    def _close_pack(self, group: str) -> None:
        pack = self._packs.pop(group, None)
        if pack:
            self._pending.append(self.outgoing(pack, f"{group}.multi"))

    def _schedule(self) -> None:
        if self._scheduled:
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._scheduled = True
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()
        loop.call_soon(self._start)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())

    def _take(self) -> list[Outgoing]:
        for group in list(self._packs):
            self._close_pack(group)
        batch = list(self._offline)
        self._offline.clear()
        batch.extend(self._pending)
        self._pending = []
        return batch

    async def _drain(self) -> None:
        try:
            while True:
                self._scheduled = False
                batch = self._take()
                if not batch:
                    break
                await self._publish(batch)
                if self._offline and not self._pending and not self._packs:
                    break  # still offline: wait for a reconnect or the next event
                if self.flush_interval:
                    await asyncio.sleep(self.flush_interval)  # let the next batch fill up
        finally:
            self._scheduled = False
            if self._idle is not None:
                self._idle.set()

    async def _publish(self, batch: list[Outgoing]) -> None:
        connection = self.connection
        if connection is None:
            self._keep_offline(batch, "no connection")
            return

        async def publish(transport: Transport) -> None:
            await transport.publish(batch)

        try:
            await connection.retrying(publish)
            self._publishes += 1
        except asyncio.CancelledError:
            self._keep_offline(batch, "cancelled")
            raise
        except Exception as exc:
            self._keep_offline(batch, exc)

    def _keep_offline(self, batch: list[Outgoing], why: object) -> None:
        if not self.buffer_while_offline:
            self._dropped += len(batch)
            logger.warning("dropped %d event message(s): %s", len(batch), why)
            return
        offline = self._offline
        offline.extend(batch)
        over = len(offline) - self.offline_limit
        for _ in range(max(over, 0)):
            offline.popleft()
            self._dropped += 1
        logger.warning(
            "could not publish %d event message(s) (%s); %d kept until the broker is back",
            len(batch),
            why,
            len(offline),
        )

    async def flush(self) -> None:
        """Publish everything queued now and wait for the broker to have it (or for it to
        land in the offline buffer)."""
        if self._pending or self._packs or self._offline:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._scheduled = True
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            self._start()
        task = self._task
        if task is not None and not task.done():
            await asyncio.shield(task)

    async def publish(self, type: str, *, blind: bool = False, **fields: Any) -> Event | None:
        """:meth:`send` and wait until the broker holds it (for the last event before a stop)."""
        event = self.send(type, blind=blind, **fields)
        await self.flush()
        return event

    async def close(self) -> None:
        """Flush and detach."""
        await self.flush()
        self.detach()

    # -- introspection ---------------------------------------------------------------------

    @property
    def offline(self) -> int:
        """Messages waiting for the broker."""
        return len(self._offline)

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(
            sent=self._sent,
            publishes=self._publishes,
            offline=len(self._offline),
            dropped=self._dropped,
            filtered=self._filtered,
        )
