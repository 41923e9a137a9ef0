"""The Memory step: a worker that goes idle after a burst gives freed memory back.

A long-running worker's resident memory should follow its work, not its busiest moment
(see :mod:`celeriac.utils.malloc` for why it otherwise stays at the high-water mark).
Once no task has finished for :data:`IDLE_AFTER` seconds after some did, the worker calls
``malloc_trim``, which takes a few milliseconds on an idle loop and nothing while busy.
Its threads share two malloc arenas rather than one each.
Prefork children keep their own heaps; what they hold is their pymalloc arenas, which
Python returns itself when they empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..utils.malloc import limit_arenas, trimmer
from ..utils.tasks import cancel_and_wait
from .bootsteps import Step
from .components import Hub

if TYPE_CHECKING:
    from .state import WorkerState
    from .worker import WorkController

__all__ = ["IDLE_AFTER", "TRIM_EVERY", "Memory"]

logger = logging.getLogger("celeriac.worker")

#: Seconds without a finished task, after a burst, before the worker trims its heap.
IDLE_AFTER = 0.25
#: Fewest seconds between two trims: tasks trickling in slower than IDLE_AFTER would
#: otherwise trim after every one (a few milliseconds each on a large heap).
TRIM_EVERY = 10.0


class Memory(Step):
    """Trims the heap once per burst, when the worker has gone idle."""

    label = "Memory"
    requires = (Hub,)

    def __init__(self, parent: WorkController, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self._task: asyncio.Task[None] | None = None

    def create(self, w: WorkController) -> None:
        # Every step is created before any starts, so before the pool's threads exist.
        limit_arenas()

    async def start(self, w: WorkController) -> None:
        trim = trimmer()
        if trim is not None:
            self._task = asyncio.ensure_future(_trim_when_idle(w.state, trim))

    async def stop(self, w: WorkController) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task, logger, "memory trimmer")


async def _trim_when_idle(state: WorkerState, trim: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()
    trimmed_at = seen = state.all_total_count
    last = -TRIM_EVERY
    while True:
        await asyncio.sleep(IDLE_AFTER)
        count = state.all_total_count
        idle = count == seen and not state.active
        if idle and count != trimmed_at and loop.time() - last >= TRIM_EVERY:
            trim()
            trimmed_at, last = count, loop.time()
        seen = count
