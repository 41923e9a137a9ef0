"""The consumer's Events and Heart steps: the worker's side of the event stream.

**Events** owns the worker's :class:`~celeriac.events.EventDispatcher`. Worker events
(``worker-online``, ``worker-heartbeat``, ``worker-offline``) are always sent, as Celery's
worker does while its heartbeat is on; task events only with ``-E`` /
``worker_send_task_events``, as the ``task`` group. Task events are packed into one
``task.multi`` message per flush (at most :data:`TASK_EVENTS_PER_PACK` per pack) and every
event of a flush goes out in one broker call, so events cost a worker one publish per
flush, not one per task. Celery's worker closes a pack at 24 events; a receiver takes a
list of any length, and each message costs its own envelope and broker command (about
20 us of the loop on Redis), so celeriac's worker packs far more.

The dispatcher outlives connection losses: while the consumer blueprint restarts, events
wait in its bounded offline buffer and go out once the new connection is attached.

**Heart** sends ``worker-heartbeat`` every ``freq`` seconds (2.0, Celery's
``--heartbeat-interval`` default), so monitors keep the worker marked alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
from typing import TYPE_CHECKING, Any

from ... import __version__
from ...events.dispatcher import EventDispatcher
from ...utils.saferepr import saferepr
from ...utils.tasks import cancel_and_wait
from ..bootsteps import Step
from .mingle import Mingle
from .steps import Connection

if TYPE_CHECKING:
    from ...protocol import TaskMessage
    from .consumer import Consumer

__all__ = [
    "Events",
    "Heart",
    "task_received_fields",
    "worker_fields",
    "heartbeat_freq",
    "HEARTBEAT_FREQ",
]

logger = logging.getLogger("celeriac.worker.events")

#: Seconds between two ``worker-heartbeat`` events (Celery's default).
HEARTBEAT_FREQ = 2.0
#: ``sw_ident`` of our worker events (Celery's workers send ``py-celery``).
SW_IDENT = "py-celeriac"
SW_SYS = platform.system()
#: Longest repr of args, kwargs and results in events (Celery's limit).
REPR_MAXLEN = 1024
#: Seconds between two event publishes of a worker: under load its task events travel
#: in a few full task.multi messages instead of one small publish per loop iteration.
EVENT_FLUSH_INTERVAL = 0.005
#: Task events per ``task.multi`` message (Celery's worker: 24).
TASK_EVENTS_PER_PACK = 1000


def task_received_fields(tm: TaskMessage) -> dict[str, Any]:
    """The fields of ``task-received`` for a decoded task message (spec section 4.4)."""
    headers = tm.headers
    return {
        "uuid": tm.id,
        "name": tm.shadow or tm.name,
        "args": tm.argsrepr if tm.argsrepr is not None else saferepr(tm.args, REPR_MAXLEN),
        "kwargs": tm.kwargsrepr if tm.kwargsrepr is not None else saferepr(tm.kwargs, REPR_MAXLEN),
        "root_id": tm.root_id,
        "parent_id": tm.parent_id,
        "retries": tm.retries,
        "eta": headers.get("eta"),
        "expires": headers.get("expires"),
    }


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return [0.0, 0.0, 0.0]


def worker_fields(c: Consumer, freq: float = HEARTBEAT_FREQ) -> dict[str, Any]:
    """The payload of worker events (Celery's heartbeat fields)."""
    state = c.state
    return {
        "freq": freq,
        "active": len(state.active),
        "processed": state.all_total_count,
        "loadavg": _loadavg(),
        "sw_ident": SW_IDENT,
        "sw_ver": __version__,
        "sw_sys": SW_SYS,
    }


class Events(Step):
    """Owns the event dispatcher; sends worker-online at start and worker-offline at stop."""

    label = "Events"
    # After Mingle: worker-online goes out once the worker knows what its peers know.
    requires = (Connection, Mingle)

    def __init__(self, parent: Consumer, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        conf = parent.app.conf
        self.send_task_events = bool(conf.worker_send_task_events)
        # Made now, not at start: events produced before the first connection (or during
        # a restart) wait in the dispatcher's offline buffer.
        self.dispatcher = EventDispatcher(
            None,
            parent.hostname,
            groups=None if self.send_task_events else ["worker"],
            buffer_group=["task"],
            buffer_limit=TASK_EVENTS_PER_PACK,
            flush_interval=EVENT_FLUSH_INTERVAL,
            exchange=conf.event_exchange or "celeryev",
            serializer=conf.event_serializer or "json",
            clock=parent.worker.clock,
        )
        #: worker-online/offline come with the heartbeat (off with --without-heartbeat).
        self.announce = not getattr(parent.worker, "without_heartbeat", False)
        parent.event_dispatcher = self.dispatcher
        parent.task_events = self.dispatcher if self.send_task_events else None
        self.dispatcher.on_enabled.append(lambda: self._switched(parent, True))
        self.dispatcher.on_disabled.append(lambda: self._switched(parent, False))
        self._online = False
        self._final = False

    def _switched(self, c: Consumer, enabled: bool) -> None:
        c.task_events = self.dispatcher if enabled and self.send_task_events else None

    async def start(self, c: Consumer) -> None:
        assert c.connection is not None
        await self.dispatcher.attach(c.connection)
        if not self._online and self.announce:
            self._online = True
            self.dispatcher.send("worker-online", **worker_fields(c, heartbeat_freq(c)))

    def close(self, c: Consumer) -> None:
        self._final = True  # close runs only when the consumer stops for good

    async def stop(self, c: Consumer) -> None:
        dispatcher = self.dispatcher
        if c.connection is not None and c.connection.is_connected:
            if self._final and self._online:
                self._online = False
                dispatcher.send("worker-offline", **worker_fields(c, heartbeat_freq(c)))
            try:
                async with asyncio.timeout(5.0):
                    await dispatcher.flush()
            except TimeoutError:
                logger.warning("events: gave up flushing %d event(s) at stop", dispatcher.offline)
        dispatcher.detach()

    def info(self, c: Consumer) -> dict[str, Any]:
        stats = self.dispatcher.statistics()
        return {"events": {"sent": stats.sent, "offline": stats.offline, "dropped": stats.dropped}}


def heartbeat_freq(c: Consumer) -> float:
    """The worker's ``--heartbeat-interval`` (2.0 s by default)."""
    return float(getattr(c.worker, "heartbeat_interval", None) or HEARTBEAT_FREQ)


class Heart(Step):
    """Sends ``worker-heartbeat`` every ``freq`` seconds while the consumer runs
    (``--heartbeat-interval``; none with ``--without-heartbeat``)."""

    label = "Heart"
    requires = (Events,)

    def __init__(self, parent: Consumer, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self.freq = heartbeat_freq(parent)
        self.task: asyncio.Task[None] | None = None

    def include_if(self, c: Consumer) -> bool:
        return not getattr(c.worker, "without_heartbeat", False)

    async def start(self, c: Consumer) -> None:
        self.task = asyncio.ensure_future(self._beat(c))

    async def _beat(self, c: Consumer) -> None:
        dispatcher = c.event_dispatcher
        assert dispatcher is not None
        while True:
            await asyncio.sleep(self.freq)
            dispatcher.send("worker-heartbeat", **worker_fields(c, self.freq))

    async def stop(self, c: Consumer) -> None:
        task, self.task = self.task, None
        await cancel_and_wait(task, logger, "heartbeat")
