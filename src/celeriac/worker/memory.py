"""The Memory step: a worker that goes idle after a burst gives freed memory back.

A long-running worker's resident memory should follow its work, not its busiest moment
(see :mod:`celeriac.utils.malloc` for why it otherwise stays at the high-water mark).
Once no task has finished for :data:`IDLE_AFTER` seconds after some did, the worker calls
``malloc_trim``, which takes a few milliseconds on an idle loop and nothing while busy.
Its threads share two malloc arenas rather than one each.
Prefork children keep their own heaps; what they hold is their pymalloc arenas, which
Python returns itself when they empty.

The step also sets how often Python's cyclic garbage collector runs (see
:func:`raise_gc_threshold`), which the pool's processes inherit.
"""

from __future__ import annotations

import asyncio
import gc
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

__all__ = ["GC_THRESHOLD", "IDLE_AFTER", "TRIM_EVERY", "Memory", "raise_gc_threshold"]

logger = logging.getLogger("celeriac.worker")

#: Seconds without a finished task, after a burst, before the worker trims its heap.
IDLE_AFTER = 0.25
#: Fewest seconds between two trims: tasks trickling in slower than IDLE_AFTER would
#: otherwise trim after every one (a few milliseconds each on a large heap).
TRIM_EVERY = 10.0
#: Allocations between two collections of the youngest generation in a worker.
GC_THRESHOLD = 20_000
#: CPython's own value of it (``gc.get_threshold()[0]`` unless someone changed it).
PYTHON_GC_THRESHOLD = 700


def raise_gc_threshold(threshold: int = GC_THRESHOLD) -> bool:
    """Run the cyclic collector's youngest generation every ``threshold`` allocations
    instead of CPython's 700, unless this process chose its own setting (a threshold
    other than 700, or the collector disabled). Returns True when raised.

    Why: a worker allocates a few dozen container objects per task (messages, requests,
    contexts, coroutines) and holds hundreds of them in flight at any moment. At 700 the
    collector ran every twenty-odd tasks and traversed the in-flight ones again each
    time, and they piled into the older generations, whose collections traverse more.
    That was a fifth of the asyncio worker's CPU in a drain of no-op tasks. Refcounting
    still frees all acyclic garbage at once; only garbage in reference cycles waits
    longer (at most ``threshold`` new objects).
    """
    first, second, third = gc.get_threshold()
    if first != PYTHON_GC_THRESHOLD or not gc.isenabled():
        return False
    gc.set_threshold(threshold, second, third)
    return True


class Memory(Step):
    """Trims the heap once per burst, when the worker has gone idle."""

    label = "Memory"
    requires = (Hub,)

    def __init__(self, parent: WorkController, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self._task: asyncio.Task[None] | None = None

    def create(self, w: WorkController) -> None:
        # Every step is created before any starts, so before the pool's threads exist
        # and before its processes fork (they inherit both settings).
        limit_arenas()
        raise_gc_threshold()

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
