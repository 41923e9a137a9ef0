"""The live top (Textual), driven by Textual's test pilot over a State filled by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from celeriac.events import State
from celeriac.events.top import EventTop

pytestmark = pytest.mark.asyncio


def filled_state() -> State:
    state = State()
    now = time.time()
    state.event({"type": "worker-online", "hostname": "w1@h", "timestamp": now, "clock": 1,
                 "freq": 2.0, "active": 1, "processed": 7, "local_received": now})  # fmt: skip
    for i, outcome in enumerate(("task-succeeded", "task-failed", "task-started")):
        uuid = f"task-{i}"
        base = {"uuid": uuid, "hostname": "w1@h", "timestamp": now + i}
        state.event({**base, "type": "task-received", "clock": 10 * i + 2, "name": f"app.t{i}",
                     "args": f"([{i}],)", "kwargs": "{}"})  # fmt: skip
        state.event({**base, "type": "task-started", "clock": 10 * i + 3})
        if outcome != "task-started":
            state.event({**base, "type": outcome, "clock": 10 * i + 4, "result": "[1]",
                         "runtime": 0.25, "exception": "ValueError('[x]')",
                         "traceback": "Traceback [boom]"})  # fmt: skip
    return state


def cell(table: DataTable, row: int, column: str) -> str:
    return str(table.get_cell_at((row, table.get_column_index(column))))


async def test_the_task_list_shows_state_name_args_runtime_and_worker() -> None:
    app = EventTop(filled_state(), refresh=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        tasks = app.query_one("#tasks", DataTable)
        assert tasks.row_count == 3
        # newest first
        assert [cell(tasks, r, "name") for r in range(3)] == ["app.t2", "app.t1", "app.t0"]
        assert [cell(tasks, r, "state") for r in range(3)] == ["STARTED", "FAILURE", "SUCCESS"]
        assert cell(tasks, 2, "args") == "([0],)"
        assert cell(tasks, 2, "runtime") == "0.250s"
        assert cell(tasks, 2, "worker") == "w1@h"
        workers = app.query_one("#workers", DataTable)
        assert workers.row_count == 1 and cell(workers, 0, "status") == "ONLINE"


async def test_selecting_a_task_shows_its_details_and_timeline() -> None:
    app = EventTop(filled_state(), refresh=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        # When the cursor moves to the second row (the failed task) and it is selected
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.selected == "task-1"
        detail = str(app.query_one("#detail", Static).render())
        assert "app.t1" in detail and "FAILURE" in detail
        # Values with brackets are shown as they are, not read as markup
        assert "ValueError('[x]')" in detail and "Traceback [boom]" in detail
        assert detail.index("task-received") < detail.index("task-started") < detail.index(
            "task-failed"
        )


async def test_filter_clear_and_revoke_keys() -> None:
    revoked: list[str] = []
    app = EventTop(filled_state(), refresh=60, on_revoke=revoked.append)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        tasks = app.query_one("#tasks", DataTable)
        await pilot.press("f")  # STARTED only
        assert app.state_filter == "STARTED" and tasks.row_count == 1
        await pilot.press("f")  # SUCCESS only
        assert [cell(tasks, r, "name") for r in range(tasks.row_count)] == ["app.t0"]
        await pilot.press("enter", "r")
        assert revoked == ["task-0"]
        await pilot.press("c")  # forget finished tasks
        assert sorted(app.state.tasks) == ["task-2"]


async def test_revoke_without_remote_control_says_so() -> None:
    app = EventTop(filled_state(), refresh=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        await pilot.press("enter", "r")
        await pilot.pause()
        assert any("remote control" in str(n.message) for n in app._notifications)


async def until(pilot: Any, condition: Any, timeout: float = 10.0) -> None:
    """Let the app refresh until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the view did not catch up in time"
        await pilot.pause(0.05)


async def test_the_view_follows_the_state_as_events_arrive() -> None:
    state = State()
    app = EventTop(state, refresh=0.05)
    async with app.run_test(size=(160, 40)) as pilot:
        tasks = app.query_one("#tasks", DataTable)
        assert tasks.row_count == 0
        state.event({"type": "task-received", "uuid": "late", "hostname": "w@h",
                     "timestamp": time.time(), "clock": 1, "name": "app.late"})  # fmt: skip
        await until(pilot, lambda: tasks.row_count == 1)
        assert cell(tasks, 0, "name") == "app.late"


async def test_the_capture_coroutine_runs_inside_the_app_and_is_cancelled_on_exit() -> None:
    state = State()
    ran: list[str] = []

    async def capture() -> None:
        state.event({"type": "task-received", "uuid": "fed", "hostname": "w@h",
                     "timestamp": time.time(), "clock": 1, "name": "app.fed"})  # fmt: skip
        try:
            await asyncio.sleep(3600)
        finally:
            ran.append("cancelled")

    app = EventTop(state, capture, refresh=0.05)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.query_one("#tasks", DataTable).row_count == 1)
    await asyncio.sleep(0)
    assert ran == ["cancelled"]
