"""The steps of the worker blueprint: Hub, Timer, Queues, Pool, Consumer.

Beat (``-B``), StateDB (``--statedb``) and Autoscaler (``--autoscale``) join this
blueprint as their own modules.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..exceptions import ConfigurationError
from ..routing import make_queue, queues_from_conf
from .bootsteps import Step
from .pools import get_pool_cls

if TYPE_CHECKING:
    from .worker import WorkController

__all__ = ["Hub", "Timer", "Queues", "Pool", "Consumer"]

logger = logging.getLogger("celeriac.worker")


class Hub(Step):
    """The asyncio event loop the worker runs on (uvloop when installed)."""

    label = "Hub"

    def create(self, w: WorkController) -> None:
        w.loop = asyncio.get_running_loop()


class Timer(Step):
    """Timed callbacks (ETA holds, rate-limit waits) run on the hub's ``call_at``."""

    label = "Timer"
    requires = (Hub,)

    def create(self, w: WorkController) -> None:
        w.timer = w.loop


class Queues(Step):
    """Resolves the queues to consume: ``-Q``, else ``task_queues``, else the default queue."""

    label = "Queues"
    requires = (Hub,)

    def create(self, w: WorkController) -> None:
        app = w.app
        configured = queues_from_conf(app)
        names = list(w.queue_names or ())
        if not names:
            names = list(configured) or [app.conf.task_default_queue]
        queues = []
        for name in names:
            if name in configured:
                queues.append(configured[name])
            elif app.conf.task_create_missing_queues:
                queues.append(make_queue(app, name))
            else:
                raise ConfigurationError(
                    f"queue {name!r} is not defined in task_queues "
                    "(and task_create_missing_queues is off)",
                    key="task_queues",
                )
        excluded = set(w.exclude_queues or ())
        w.queues = [q for q in queues if q.name not in excluded]
        if not w.queues:
            raise ConfigurationError("the worker has no queue left to consume (check -Q and -X)")


class Pool(Step):
    """The execution pool (``-P``) with ``-c`` slots."""

    label = "Pool"
    requires = (Hub,)

    def create(self, w: WorkController) -> None:
        cls = get_pool_cls(w.pool_name)
        w.pool = cls(
            w.app,
            w.concurrency,
            max_tasks_per_child=w.max_tasks_per_child,
            hostname=w.hostname,
        )

    async def start(self, w: WorkController) -> None:
        await w.pool.start()

    async def terminate(self, w: WorkController) -> None:
        await w.pool.terminate()

    async def stop(self, w: WorkController) -> None:
        await w.pool.stop()


class Consumer(Step):
    """The consumer (its own blueprint), started as a task so the worker can watch it."""

    label = "Consumer"
    requires = (Pool, Queues, Timer)
    last = True

    async def start(self, w: WorkController) -> None:
        from .consumer.consumer import Consumer as WorkerConsumer

        w.consumer = WorkerConsumer(w)
        w.consumer_task = asyncio.ensure_future(w.consumer.start())

    async def stop(self, w: WorkController) -> None:
        await self._shutdown(w, warm=True)

    async def terminate(self, w: WorkController) -> None:
        await self._shutdown(w, warm=False)

    async def _shutdown(self, w: WorkController, warm: bool) -> None:
        if w.consumer is None:
            return
        await w.consumer.shutdown(warm=warm)
        task = w.consumer_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass
