"""A worker gives freed memory back once per burst, when it has gone idle."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from celeriac.utils import malloc
from celeriac.worker import memory
from celeriac.worker.state import WorkerState


def test_trims_once_after_each_burst_and_never_while_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "IDLE_AFTER", 0.01)
    monkeypatch.setattr(memory, "TRIM_EVERY", 0.0)
    state = WorkerState()
    trims: list[int] = []

    async def main() -> None:
        task = asyncio.ensure_future(
            memory._trim_when_idle(state, lambda: trims.append(state.all_total_count))
        )
        await asyncio.sleep(0.05)
        assert trims == []  # nothing ran yet: nothing to give back
        for _ in range(10):  # busy: a task finishes every tick
            state.all_total_count += 1
            await asyncio.sleep(0.01)
        state.active["x"] = object()  # type: ignore[assignment]
        await asyncio.sleep(0.05)
        assert trims == []  # a task still running is not idle
        del state.active["x"]
        await asyncio.sleep(0.05)
        assert trims == [10]  # idle after the burst: one trim
        await asyncio.sleep(0.05)
        assert trims == [10]  # staying idle: no more
        state.all_total_count += 5
        await asyncio.sleep(0.05)
        assert trims == [10, 15]  # the next burst: one more
        task.cancel()

    asyncio.run(main())


def test_trims_no_more_often_than_trim_every(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given tasks trickling in slower than the idle delay
    monkeypatch.setattr(memory, "IDLE_AFTER", 0.01)
    monkeypatch.setattr(memory, "TRIM_EVERY", 10.0)
    state = WorkerState()
    trims: list[int] = []

    async def main() -> None:
        task = asyncio.ensure_future(memory._trim_when_idle(state, lambda: trims.append(1)))
        for _ in range(5):
            state.all_total_count += 1
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert trims == [1]  # the first idle spell trims; the next ones are too soon


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_glibc_calls_work_and_the_users_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    trim = malloc.trimmer()
    assert trim is not None
    trim()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert malloc.limit_arenas() is False


@pytest.fixture
def gc_settings() -> Iterator[None]:
    """Restore this process's collector settings after a test changed them."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def test_a_worker_keeps_the_collector_off_its_start_up_heap_until_it_stops(
    gc_settings: None,
) -> None:
    gc.set_threshold(700, 10, 10)
    gc.enable()
    worker = SimpleNamespace(ready=threading.Event(), state=WorkerState())
    step = memory.Memory(worker)
    async def main() -> None:
        await step.start(worker)  # type: ignore[arg-type]
        frozen = gc.get_freeze_count()
        loaded_later = [[] for _ in range(1000)]  # as connecting does
        assert frozen > 1000  # at least this test process's modules
        assert gc.get_threshold() == (memory.GC_THRESHOLD, 10, 10)
        await asyncio.sleep(0.1)
        assert gc.get_freeze_count() <= frozen  # not consuming yet (frozen ones may be freed)
        worker.ready.set()
        await asyncio.sleep(0.1)
        assert gc.get_freeze_count() >= frozen + len(loaded_later) - 100
        await step.stop(worker)  # type: ignore[arg-type]

    asyncio.run(main())
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)


def test_a_gc_setting_the_user_chose_is_kept(gc_settings: None) -> None:
    gc.set_threshold(5000, 20, 30)
    undo = memory.tune_gc()
    assert undo is not None
    assert gc.get_threshold() == (5000, 20, 30)  # already less often than the worker's
    gc.set_threshold(5000, 1, 1)
    undo()
    assert gc.get_threshold() == (5000, 1, 1)  # what was set meanwhile stays
    gc.set_threshold(700, 10, 10)
    undo = memory.tune_gc()
    assert undo is not None
    gc.set_threshold(memory.GC_THRESHOLD, 5, 5)  # changed while the worker ran
    undo()
    assert gc.get_threshold() == (memory.GC_THRESHOLD, 5, 5)
    gc.set_threshold(0)  # automatic collection off, though "enabled"
    assert memory.tune_gc() is None
    assert gc.get_threshold()[0] == 0
    gc.disable()
    gc.set_threshold(700, 10, 10)
    assert memory.tune_gc() is None  # the process runs without the collector: left so
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)
