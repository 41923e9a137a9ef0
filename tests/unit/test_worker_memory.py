"""A worker gives freed memory back once per burst, when it has gone idle."""

from __future__ import annotations

import asyncio
import sys

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
