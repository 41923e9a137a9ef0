"""The steps of the consumer blueprint: Connection, Tasks, Evloop.

Events, Gossip, Heart, Control and Mingle join this blueprint as their own modules.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ...messaging.consumer import Consumer as MessageConsumer
from ...utils.tasks import cancel_and_wait
from ..bootsteps import Step

if TYPE_CHECKING:
    from .consumer import Consumer

__all__ = ["Connection", "Tasks", "Evloop"]

logger = logging.getLogger("celeriac.worker.consumer")


class Connection(Step):
    """Connects to the broker (retrying with backoff); closed when the blueprint stops."""

    label = "Connection"

    async def start(self, c: Consumer) -> None:
        c.connection = c.app.connection_for()
        c.connecting = True  # stays set if connect() gives up: the consumer then ends
        await c.connection.connect()
        c.connecting = False
        logger.info("Connected to %s", c.connection.as_uri())

    async def stop(self, c: Consumer) -> None:
        if c.connection is not None:
            try:
                await c.connection.close()
            except Exception as exc:  # closing a broken connection must not stop the rest
                logger.debug("closing connection: %r", exc)
            c.connection = None


#: Most messages a worker claims beyond its prefetch limit while tasks are short. Every
#: message held costs about 70 small objects, and CPython's allocator returns an arena
#: only once it is empty, so the process stays near its highest mark of messages held;
#: 500 drained about as fast as 1000 did, on Redis and on SQLite.
MAX_BURST = 500
#: Seconds between two looks at the completion rate.
BURST_TICK = 0.1


class Tasks(Step):
    """Consumes the task queues with the prefetch limit, feeding ``on_task_received``.

    While tasks finish quickly, the worker may hold up to ``worker_prefetch_burst``
    seconds of them (at the rate they are finishing, at most :data:`MAX_BURST`) beyond
    ``worker_prefetch_multiplier`` x concurrency, so it claims in batches big enough that
    the broker round trips do not bound the rate. Long tasks finish slowly, so the burst
    stays near zero and the prefetch limit means what it always meant; 0, a prefetch
    multiplier of 1 or ``worker_disable_prefetch`` switch the burst off.
    """

    label = "Tasks"
    # After Events, so worker-online goes out before the first task event.
    requires = (Connection, "celeriac.worker.consumer.events:Events")

    def __init__(self, parent: object, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self.task: asyncio.Task[None] | None = None
        self.tuner: asyncio.Task[None] | None = None

    async def start(self, c: Consumer) -> None:
        assert c.connection is not None
        c.update_strategies()
        c.task_consumer = MessageConsumer(
            c.connection,
            c.queues,
            c.on_task_received,
            prefetch_count=c.prefetch_count,
        )
        self.task = asyncio.ensure_future(c.task_consumer.run())
        c.consume_task = self.task
        conf = c.app.conf
        window = float(conf.worker_prefetch_burst or 0.0)
        # A multiplier of 1 (or none: unlimited) is a deliberate choice, usually for long
        # tasks shared fairly between workers: the burst keeps out of its way.
        multiplier = int(conf.worker_prefetch_multiplier or 0)
        if window > 0 and multiplier > 1 and not conf.worker_disable_prefetch:
            self.tuner = asyncio.ensure_future(self._follow_rate(c, window))

    async def _follow_rate(self, c: Consumer, window: float) -> None:
        loop = asyncio.get_running_loop()
        done, then, rate = c.completed, loop.time(), 0.0
        while c.task_consumer is not None:
            await asyncio.sleep(BURST_TICK)
            now, finished = loop.time(), c.completed
            seen = (finished - done) / max(now - then, 1e-3)
            done, then = finished, now
            # Rise at once, fall by halves: a pause in the work does not collapse it.
            rate = seen if seen > rate else (rate + seen) / 2
            if c.task_consumer is not None:
                c.task_consumer.burst = min(MAX_BURST, int(rate * window))

    async def stop(self, c: Consumer) -> None:
        tuner, self.tuner = self.tuner, None
        await cancel_and_wait(tuner)
        if c.task_consumer is not None:
            c.task_consumer.stop()
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
            except BaseException as exc:
                logger.debug("task consumer ended with %r", exc)
            self.task = None


class Evloop(Step):
    """Runs until the worker asks the consumer to stop, or the task consumer fails."""

    label = "event loop"
    last = True

    async def start(self, c: Consumer) -> None:
        stop = asyncio.ensure_future(c.wait_stop_requested())
        consume = c.consume_task
        waiters = {stop} if consume is None else {stop, consume}
        c.worker.ready.set()
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if consume is not None and consume in done and stop not in done:
            exc = consume.exception()
            if exc is not None:
                raise exc
