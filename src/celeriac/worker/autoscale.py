"""The Autoscaler worker step: ``--autoscale MAX,MIN`` sizes the pool to the backlog.

Every :data:`AUTOSCALE_INTERVAL` seconds it counts the requests this worker holds
(running plus reserved, not those held for an ETA): when they exceed the pool size the
pool grows to match (up to ``max``) at once; when the pool has had more slots than work
for ``keepalive`` seconds it shrinks (down to ``min``), one step per tick. The worker
claims messages for ``max`` slots from the start, so a backlog is visible here before the
pool has grown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..utils.tasks import cancel_and_wait
from .bootsteps import Step
from .components import Pool

if TYPE_CHECKING:
    from .pools.base import Pool as ExecutionPool
    from .worker import WorkController

__all__ = ["Autoscaler", "AutoscalerStep", "AUTOSCALE_INTERVAL", "AUTOSCALE_KEEPALIVE"]

logger = logging.getLogger("celeriac.worker.autoscale")

#: Seconds between two looks at the backlog.
AUTOSCALE_INTERVAL = 1.0
#: Seconds the pool must have been over-sized before it shrinks (Celery's default: 30).
AUTOSCALE_KEEPALIVE = 30.0


class Autoscaler:
    """Grows and shrinks ``pool`` between ``min`` and ``max`` (see the module docstring)."""

    def __init__(
        self,
        worker: WorkController,
        max_concurrency: int,
        min_concurrency: int,
        keepalive: float = AUTOSCALE_KEEPALIVE,
        interval: float = AUTOSCALE_INTERVAL,
    ) -> None:
        self.worker = worker
        self.max_concurrency = max_concurrency
        self.min_concurrency = min_concurrency
        self.keepalive = keepalive
        self.interval = interval
        self._last_scale_up = time.monotonic()
        self._prefetch_done = False
        #: Grow and shrink operations so far.
        self.scale_ups = 0
        self.scale_downs = 0

    def __repr__(self) -> str:
        return f"<Autoscaler max={self.max_concurrency} min={self.min_concurrency}>"

    @property
    def pool(self) -> ExecutionPool:
        return self.worker.pool

    @property
    def processes(self) -> int:
        return self.pool.limit

    def qty(self) -> int:
        """Requests this worker holds that want a slot (running + waiting for one)."""
        state = self.worker.state
        consumer = self.worker.consumer
        held = len(consumer.held) if consumer is not None else 0
        return len(state.active) + max(len(state.reserved) - held, 0)

    def body(self) -> None:
        """One look at the backlog (what the periodic loop runs)."""
        self._size_prefetch()
        wanted = min(self.qty(), self.max_concurrency)
        procs = self.processes
        if wanted > procs:
            self.scale_up(wanted - procs)
        elif (
            wanted < procs
            and procs > self.min_concurrency
            and time.monotonic() - self._last_scale_up > self.keepalive
        ):
            self.scale_down(1)

    def _size_prefetch(self) -> None:
        """Claim for ``max`` slots: the backlog must reach this worker to be seen."""
        consumer = self.worker.consumer
        if self._prefetch_done or consumer is None or consumer.task_consumer is None:
            return
        multiplier = self.worker.app.conf.worker_prefetch_multiplier
        if multiplier:
            extra = (self.max_concurrency - self.processes) * int(multiplier)
            if extra > 0:
                consumer.task_consumer.prefetch_count += extra
        self._prefetch_done = True

    def scale_up(self, n: int) -> None:
        n = min(n, self.max_concurrency - self.processes)
        if n <= 0:
            return
        logger.info("Scaling up %d processes.", n)
        self.pool.grow(n)
        self._last_scale_up = time.monotonic()
        self.scale_ups += 1

    def scale_down(self, n: int) -> None:
        n = min(n, self.processes - self.min_concurrency)
        if n <= 0:
            return
        logger.info("Scaling down %d processes.", n)
        self.pool.shrink(n)
        self.scale_downs += 1

    def force_scale_up(self, n: int) -> None:
        """``pool_grow`` while autoscaling: raise both bounds by ``n``, grow now."""
        self.max_concurrency += n
        self.min_concurrency += n
        self.scale_up(self.min_concurrency - self.processes)

    def force_scale_down(self, n: int) -> None:
        """``pool_shrink`` while autoscaling: lower both bounds by ``n`` (not below 1)."""
        self.min_concurrency = max(self.min_concurrency - n, 1)
        self.max_concurrency = max(self.max_concurrency - n, self.min_concurrency)
        if self.processes > self.max_concurrency:
            self.scale_down(self.processes - self.max_concurrency)

    def update(self, max: int | None = None, min: int | None = None) -> tuple[int, int]:
        """New bounds (the ``autoscale`` command); returns ``(max, min)``.

        Raises:
            ValueError: min above max or below 1.
        """
        new_max = self.max_concurrency if max is None else int(max)
        new_min = self.min_concurrency if min is None else int(min)
        if new_min < 1 or new_max < new_min:
            raise ValueError(f"autoscale needs 1 <= min <= max, got max={new_max} min={new_min}")
        self.max_concurrency, self.min_concurrency = new_max, new_min
        if self.processes > new_max:
            self.scale_down(self.processes - new_max)
        elif self.processes < new_min:
            self.scale_up(new_min - self.processes)
        return new_max, new_min

    def info(self) -> dict[str, Any]:
        return {
            "max": self.max_concurrency,
            "min": self.min_concurrency,
            "current": self.processes,
            "qty": self.qty(),
        }


class AutoscalerStep(Step):
    """``--autoscale MAX,MIN``: runs an :class:`Autoscaler` every second."""

    label = "Autoscaler"
    requires = (Pool,)

    def __init__(self, parent: WorkController, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.task: asyncio.Task[None] | None = None

    def include_if(self, w: WorkController) -> bool:
        return getattr(w, "autoscale", None) is not None

    def create(self, w: WorkController) -> None:
        assert w.autoscale is not None
        max_, min_ = w.autoscale
        w.autoscaler = Autoscaler(w, max_, min_)

    async def start(self, w: WorkController) -> None:
        self.task = asyncio.ensure_future(self._run(w.autoscaler))

    async def _run(self, scaler: Autoscaler) -> None:
        while True:
            await asyncio.sleep(scaler.interval)
            try:
                scaler.body()
            except Exception:
                logger.exception("autoscaler failed")

    async def stop(self, w: WorkController) -> None:
        task, self.task = self.task, None
        await cancel_and_wait(task, logger, "autoscaler")

    async def terminate(self, w: WorkController) -> None:
        await self.stop(w)
