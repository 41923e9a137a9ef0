"""``celeriac events``: a live terminal "top" of workers and tasks (Textual).

The left pane lists the most recently updated tasks (state, name, args, runtime, worker);
the right shows the workers and, for the task under the cursor, its details and timeline.
The view is redrawn from the :class:`~celeriac.events.State` a few times a second, so a
burst of events costs one redraw, not one per event.

Keys: arrows move, ``enter`` selects, ``f`` cycles a state filter, ``c`` forgets finished
tasks, ``r`` would revoke the selected task (remote control is not part of this version;
the key says so), ``q`` quits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Static

from .. import states
from .state import State, Task

__all__ = ["EventTop", "STATE_STYLES"]

#: Colour of each state in the task list.
STATE_STYLES = {
    states.PENDING: "dim",
    states.RECEIVED: "cyan",
    states.STARTED: "yellow",
    states.RETRY: "magenta",
    states.SUCCESS: "green",
    states.FAILURE: "bold red",
    states.REVOKED: "red",
    states.REJECTED: "red",
}
#: State filters the ``f`` key cycles through (None: every task).
FILTERS: tuple[str | None, ...] = (
    None,
    states.STARTED,
    states.SUCCESS,
    states.FAILURE,
    states.RETRY,
    states.RECEIVED,
)


def _clip(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else ""


def describe(task: Task, state: State) -> str:
    """The detail pane's text (Rich markup; every value escaped) for one task."""

    def row(label: str, value: Any) -> str:
        return f"{label:<10}{escape(_clip('' if value is None else value, 300))}"

    style = STATE_STYLES.get(task.state or "", "")
    lines = [
        f"[b]{escape(task.name or '?')}[/b]  [{style}]{task.state}[/]"
        if style
        else f"[b]{escape(task.name or '?')}[/b]  {task.state}",
        row("uuid", task.uuid),
        row("worker", task.worker),
        row("client", task.client),
        row("args", task.args),
        row("kwargs", task.kwargs),
        row("retries", task.retries),
        row("runtime", None if task.runtime is None else f"{task.runtime:.4f}s"),
        row("eta", task.eta),
        row("expires", task.expires),
        row("root", task.root_id),
        row("parent", task.parent_id),
        row("children", len(task.children)),
    ]
    if task.result is not None:
        lines.append(row("result", task.result))
    if task.exception is not None:
        lines.append(row("exception", task.exception))
    lines += ["", "[b]timeline[/b]"]
    for type_, timestamp, clock, origin in state.timeline(task.uuid):
        lines.append(f"  {_when(timestamp)} clock={clock:<6} {type_:<15} {escape(origin)}")
    if task.traceback:
        lines += ["", "[b]traceback[/b]", escape(task.traceback)]
    return "\n".join(lines)


class EventTop(App[None]):
    """The live top (see the module docstring).

    Args:
        state: The State to show; something else (``capture``) keeps it up to date.
        capture: A coroutine function run inside the app's loop that feeds ``state``
            (the CLI passes the receiver's capture); None for a fixed State (tests).
        refresh: Seconds between redraws.
        max_rows: Tasks listed at most.
        on_revoke: Called with a task id when ``r`` is pressed, if revoking is available.
    """

    TITLE = "celeriac events"
    CSS = """
    #tasks { width: 3fr; }
    #side { width: 2fr; }
    #workers { height: auto; max-height: 12; }
    #detail { height: 1fr; overflow-y: auto; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("f", "cycle_filter", "Filter"),
        Binding("c", "clear_finished", "Clear finished"),
        Binding("r", "revoke", "Revoke"),
    ]

    def __init__(
        self,
        state: State,
        capture: Callable[[], Awaitable[Any]] | None = None,
        *,
        refresh: float = 0.5,
        max_rows: int = 200,
        on_revoke: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__()
        self.state = state
        self.capture = capture
        self.refresh_interval = refresh
        self.max_rows = max_rows
        self.on_revoke = on_revoke
        self.selected: str | None = None
        self.filter_index = 0
        self._capture_task: asyncio.Task[Any] | None = None

    @property
    def state_filter(self) -> str | None:
        return FILTERS[self.filter_index]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield DataTable(id="tasks", cursor_type="row", zebra_stripes=True)
            with Vertical(id="side"):
                yield DataTable(id="workers", cursor_type="none")
                yield Static("select a task", id="detail")
        yield Footer()

    def on_mount(self) -> None:
        tasks = self.query_one("#tasks", DataTable)
        tasks.add_column("UUID", key="uuid", width=12)
        tasks.add_column("Name", key="name", width=24)
        tasks.add_column("State", key="state", width=9)
        tasks.add_column("Args", key="args", width=20)
        tasks.add_column("Runtime", key="runtime", width=9)
        tasks.add_column("Worker", key="worker", width=20)
        tasks.add_column("Updated", key="updated", width=8)
        workers = self.query_one("#workers", DataTable)
        for label in ("Worker", "Status", "Active", "Processed"):
            workers.add_column(label, key=label.lower())
        self.refresh_view()
        self.set_interval(self.refresh_interval, self.refresh_view)
        if self.capture is not None:
            self._capture_task = asyncio.ensure_future(self.capture())

    async def on_unmount(self) -> None:
        if self._capture_task is not None:
            self._capture_task.cancel()

    # -- drawing ---------------------------------------------------------------------------

    def visible_tasks(self) -> list[Task]:
        wanted = self.state_filter
        if wanted is None:
            return self.state.latest(self.max_rows)
        return self.state.tasks_by_state(wanted, self.max_rows)

    def refresh_view(self) -> None:
        # A timer tick can still come while the app shuts down and its widgets are gone
        # (Textual clears is_running before it removes them).
        if self.is_running:
            self._refresh_view()

    def _refresh_view(self) -> None:
        state = self.state
        table = self.query_one("#tasks", DataTable)
        rows = state.freeze_while(self.visible_tasks)
        table.clear()
        for task in rows:
            style = STATE_STYLES.get(task.state or "", "")
            table.add_row(
                _clip(task.uuid, 12),
                _clip(task.name, 24),
                Text(task.state or "", style=style),
                _clip(task.args, 20),
                "" if task.runtime is None else f"{task.runtime:.3f}s",
                _clip(task.worker, 20),
                _when(task.timestamp),
                key=task.uuid,
            )
        if self.selected is not None:
            keys = [t.uuid for t in rows]
            if self.selected in keys:
                table.move_cursor(row=keys.index(self.selected), animate=False)
        workers = self.query_one("#workers", DataTable)
        workers.clear()
        for worker in list(state.workers.values()):
            alive = worker.alive
            workers.add_row(
                worker.hostname,
                Text("ONLINE" if alive else "OFFLINE", style="green" if alive else "red"),
                "" if worker.active is None else str(worker.active),
                "" if worker.processed is None else str(worker.processed),
            )
        counts = state.state_counts()
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        shown = self.state_filter or "all"
        self.sub_title = f"events={state.event_count} tasks={len(state.tasks)} [{shown}] {summary}"
        self._show_detail()

    def _show_detail(self) -> None:
        if not self.is_running:  # a highlight message arrived while the app shuts down
            return
        detail = self.query_one("#detail", Static)
        task = self.state.task(self.selected) if self.selected else None
        if task is None:
            detail.update("select a task")
        else:
            detail.update(self.state.freeze_while(describe, task, self.state))

    # -- interaction -----------------------------------------------------------------------

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        if message.data_table.id == "tasks" and message.row_key.value is not None:
            self.selected = str(message.row_key.value)
            self._show_detail()

    def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        if message.data_table.id == "tasks" and message.row_key.value is not None:
            self.selected = str(message.row_key.value)
            self._show_detail()

    def action_cycle_filter(self) -> None:
        self.filter_index = (self.filter_index + 1) % len(FILTERS)
        self.refresh_view()

    def action_clear_finished(self) -> None:
        self.state.clear(ready=True)
        self.refresh_view()

    def action_revoke(self) -> None:
        if self.selected is None:
            self.notify("select a task first", severity="warning")
        elif self.on_revoke is None:
            self.notify(
                "revoking needs remote control, which this version does not have yet",
                severity="warning",
            )
        else:
            self.on_revoke(self.selected)
            self.notify(f"revoke sent for {self.selected}")
