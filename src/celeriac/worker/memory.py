"""The Memory step: a worker that goes idle after a burst gives freed memory back.

A long-running worker's resident memory should follow its work, not its busiest moment
(see :mod:`celeriac.utils.malloc` for why it otherwise stays at the high-water mark).
Once no task has finished for :data:`IDLE_AFTER` seconds after some did, the worker calls
``malloc_trim``, which takes a few milliseconds on an idle loop and nothing while busy.
Its threads share two malloc arenas rather than one each.
Prefork children keep their own heaps; what they hold is their pymalloc arenas, which
Python returns itself when they empty.

The step also keeps Python's cyclic garbage collector off what the worker loaded at
start-up and sets how often it runs in the worker's process (see :func:`tune_gc`).
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

__all__ = ["GC_THRESHOLD", "IDLE_AFTER", "TRIM_EVERY", "Memory", "tune_gc"]

logger = logging.getLogger("celeriac.worker")

#: Seconds without a finished task, after a burst, before the worker trims its heap.
IDLE_AFTER = 0.25
#: Fewest seconds between two trims: tasks trickling in slower than IDLE_AFTER would
#: otherwise trim after every one (a few milliseconds each on a large heap).
TRIM_EVERY = 10.0
#: Fewest allocations between two collections of the youngest generation in a worker:
#: CPython 3.13's own default (3.11 and 3.12 collect every 700).
GC_THRESHOLD = 2000
#: Seconds between two looks at whether the worker has started consuming.
READY_POLL = 0.05


def tune_gc(threshold: int = GC_THRESHOLD) -> Callable[[], None] | None:
    """Freeze the objects alive now out of the cyclic collector's reach, and collect the
    youngest generation every ``threshold`` allocations at most. Returns what undoes
    both, or None when the collector is off (disabled, or a threshold of 0: the process
    chose to run without it).

    Why: at 700 allocations the young collections ran every twenty-odd tasks over the
    hundreds of messages and requests a busy worker holds in flight, and the full ones
    traversed everything it had loaded (about 38,000 objects), none of which ever
    becomes garbage. A much higher threshold saved more (20,000: a fifth of the asyncio
    worker's CPU in a drain, against a tenth here), but cyclic garbage a task leaves (an
    exception kept in a local, say) would then wait that much longer to be freed.
    """
    before = gc.get_threshold()
    if not gc.isenabled() or before[0] == 0:
        return None
    _freeze_loaded()
    raised = (threshold, *before[1:])
    if before[0] < threshold:
        gc.set_threshold(*raised)

    def undo() -> None:
        gc.unfreeze()
        if before[0] < threshold and gc.get_threshold() == raised:  # nobody changed it since
            gc.set_threshold(*before)

    return undo


def _freeze_loaded() -> None:
    """Collect, then freeze what is left: start-up's garbage is freed, not frozen."""
    gc.collect()
    gc.freeze()


class Memory(Step):
    """Trims the heap once per burst, when the worker has gone idle."""

    label = "Memory"
    requires = (Hub,)

    def __init__(self, parent: WorkController, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self._task: asyncio.Task[None] | None = None
        self._freezer: asyncio.Task[None] | None = None
        self._untune: Callable[[], None] | None = None

    def create(self, w: WorkController) -> None:
        # Every step is created before any starts, so before the pool's threads exist.
        limit_arenas()

    async def start(self, w: WorkController) -> None:
        # Here rather than in create: a step that was started is stopped, also when a
        # later one fails to start, so the process's collector is always put back.
        self._untune = tune_gc()
        trim = trimmer()
        if trim is not None:
            self._task = asyncio.ensure_future(_trim_when_idle(w.state, trim))
        if self._untune is not None:
            self._freezer = asyncio.ensure_future(self._freeze_when_consuming(w))

    async def _freeze_when_consuming(self, w: WorkController) -> None:
        """Freeze again once the consumer runs: connecting imports the transport and the
        result backend and builds their clients after :meth:`start` froze the rest."""
        while not w.ready.is_set():
            await asyncio.sleep(READY_POLL)
        _freeze_loaded()  # (stop cancels this before it undoes the tuning)

    async def stop(self, w: WorkController) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task, logger, "memory trimmer")
        freezer, self._freezer = self._freezer, None
        await cancel_and_wait(freezer, logger, "gc freezer")
        untune, self._untune = self._untune, None
        if untune is not None:  # a worker embedded in a process leaves its gc as it was
            untune()


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
