"""The consumer's Control step: the worker's mailbox, served on the event loop.

The worker declares ``<nodename>.celery.pidbox`` on the ``celery.pidbox`` fanout
exchange and answers every request meant for it with :class:`~celeriac.worker.control.Panel`
commands, one at a time, on the event loop. Nothing here waits for a pool slot, so a
worker whose pool is full still answers ``inspect`` within a broker round trip.
Disabled with ``worker_enable_remote_control = False``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ...exceptions import BrokerConnectionError, ConnectionClosedError
from ...messaging.mailbox import Mailbox, Node
from ...utils.tasks import cancel_and_wait
from ..bootsteps import Step
from ..control import Panel

if TYPE_CHECKING:
    from .consumer import Consumer

__all__ = ["Control", "mailbox_for"]

logger = logging.getLogger("celeriac.worker.control")

#: Pause (s) before serving the mailbox again after the broker went away.
RESTART_PAUSE = 1.0


def mailbox_for(c: Consumer) -> Mailbox:
    """The worker's mailbox on the consumer's connection, with Celery's control settings."""
    conf = c.app.conf
    assert c.connection is not None
    return Mailbox(
        c.connection,
        conf.control_exchange or "celery",
        serializer="json",
        accept=tuple(conf.accept_content or ("json",)),
        clock=c.worker.clock,
        queue_ttl=conf.control_queue_ttl,
        queue_expires=conf.control_queue_expires,
    )


class Control(Step):
    """Serves remote-control commands (see the module docstring)."""

    label = "Control"
    requires = ("celeriac.worker.consumer.events:Events",)

    def __init__(self, parent: Consumer, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self.panel: Panel | None = None
        self.node: Node | None = None
        self.task: asyncio.Task[None] | None = None

    def include_if(self, c: Consumer) -> bool:
        return bool(c.app.conf.worker_enable_remote_control)

    async def start(self, c: Consumer) -> None:
        self.panel = Panel(c)
        self.node = mailbox_for(c).Node(c.hostname, self.panel.handle)
        await self.node.declare()  # requests sent after start() are not missed
        self.task = asyncio.ensure_future(self._serve(self.node))

    async def _serve(self, node: Node) -> None:
        while True:
            try:
                await node.run()
                return
            except ConnectionClosedError:
                return
            except BrokerConnectionError as exc:
                logger.warning("remote control: broker unreachable (%s); retrying", exc)
                await asyncio.sleep(RESTART_PAUSE)

    async def stop(self, c: Consumer) -> None:
        if self.node is not None:
            self.node.stop()
        task, self.task = self.task, None
        await cancel_and_wait(task, logger, "remote control")
