"""A worker gives freed memory back once per burst, when it has gone idle."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator

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
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def test_a_worker_raises_pythons_default_gc_threshold(gc_settings: None) -> None:
    gc.set_threshold(memory.PYTHON_GC_THRESHOLD, 10, 10)
    gc.enable()
    memory.Memory(object()).create(None)  # type: ignore[arg-type]
    assert gc.get_threshold() == (memory.GC_THRESHOLD, 10, 10)


def test_a_gc_setting_the_user_chose_is_kept(gc_settings: None) -> None:
    gc.set_threshold(5000, 20, 30)
    assert memory.raise_gc_threshold() is False
    assert gc.get_threshold() == (5000, 20, 30)
    gc.set_threshold(memory.PYTHON_GC_THRESHOLD, 10, 10)
    gc.disable()
    assert memory.raise_gc_threshold() is False
    assert gc.get_threshold() == (memory.PYTHON_GC_THRESHOLD, 10, 10)
    assert not gc.isenabled()
