"""The steps of the consumer blueprint: Connection, Tasks, Evloop.

Events, Gossip, Heart, Control and Mingle join this blueprint as their own modules.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ...messaging.consumer import Consumer as MessageConsumer
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


class Tasks(Step):
    """Consumes the task queues with the prefetch limit, feeding ``on_task_received``."""

    label = "Tasks"
    # After Events, so worker-online goes out before the first task event.
    requires = (Connection, "celeriac.worker.consumer.events:Events")

    def __init__(self, parent: object, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self.task: asyncio.Task[None] | None = None

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

    async def stop(self, c: Consumer) -> None:
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
