"""Cameras: periodic snapshots of the cluster :class:`~celeriac.events.State`.

``celeriac events --camera module.Camera --frequency 2.0`` keeps a State from the event
stream and, every ``frequency`` seconds, calls the camera's :meth:`Polaroid.on_shutter`
with it (while no event is applied, so the camera sees a consistent picture). A camera is
a class:

.. code-block:: python

    from celeriac.events.snapshot import Polaroid

    class Camera(Polaroid):
        def on_shutter(self, state):
            print(state.state_counts())

``maxrate`` (``"100/s"``, ``"10/m"``) caps how often shutters fire, whatever the frequency.
:class:`SQLiteCamera` is a real one: it writes each snapshot to a SQLite file that
``celeriac snapshots`` queries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..utils.ratelimit import TokenBucket, parse_rate
from .state import State

__all__ = ["Polaroid", "SQLiteCamera", "DEFAULT_DB", "query"]

logger = logging.getLogger("celeriac.events.snapshot")

#: Where :class:`SQLiteCamera` writes when given no path.
DEFAULT_DB = "celeriac-snapshots.db"


class Polaroid:
    """The camera API: override :meth:`on_shutter` (and :meth:`on_cleanup` if you keep
    data that must be trimmed).

    Args:
        state: The State the receiver keeps up to date.
        freq: Seconds between shutters.
        maxrate: Most shutters per time unit (``"100/s"``), or None for no cap.
        cleanup_freq: Seconds between :meth:`on_cleanup` calls.
    """

    def __init__(
        self,
        state: State,
        freq: float = 1.0,
        maxrate: str | float | None = None,
        cleanup_freq: float = 3600.0,
    ) -> None:
        if freq <= 0:
            raise ValueError(f"freq must be > 0 seconds, got {freq!r}")
        self.state = state
        self.freq = freq
        self.cleanup_freq = cleanup_freq
        rate = parse_rate(maxrate) if maxrate else 0.0
        self.maxrate: TokenBucket | None = TokenBucket(rate, capacity=1) if rate else None
        self.shutters = 0
        self._last_cleanup = time.monotonic()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} every {self.freq}s shutters={self.shutters}>"

    def on_shutter(self, state: State) -> None:
        """Take one snapshot of ``state``."""

    def on_cleanup(self) -> None:
        """Trim what the camera stored (called every ``cleanup_freq`` seconds)."""

    def shutter(self) -> bool:
        """Take a snapshot now unless ``maxrate`` forbids it; True if one was taken."""
        if self.maxrate is not None and not self.maxrate.can_consume(1):
            return False
        self.state.freeze_while(self.on_shutter, self.state)
        self.shutters += 1
        if time.monotonic() - self._last_cleanup >= self.cleanup_freq:
            self._last_cleanup = time.monotonic()
            self.on_cleanup()
        return True

    async def run(self) -> None:
        """Shutter every ``freq`` seconds until cancelled; a last shutter at the end."""
        try:
            while True:
                await asyncio.sleep(self.freq)
                self.shutter()
        finally:
            self.shutter()
            self.close()

    def close(self) -> None:
        """Release resources (called once when the camera stops)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    taken_at REAL NOT NULL,
    event_count INTEGER NOT NULL,
    task_count INTEGER NOT NULL,
    workers_alive INTEGER NOT NULL,
    states TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    uuid TEXT PRIMARY KEY,
    name TEXT, state TEXT, worker TEXT, args TEXT, kwargs TEXT, result TEXT,
    exception TEXT, traceback TEXT, retries INTEGER, runtime REAL,
    received REAL, started REAL, timestamp REAL, clock INTEGER,
    root_id TEXT, parent_id TEXT, snapshot_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks (name);
CREATE TABLE IF NOT EXISTS workers (
    hostname TEXT PRIMARY KEY,
    alive INTEGER, active INTEGER, processed INTEGER, freq REAL, last_heartbeat REAL,
    sw_ident TEXT, sw_ver TEXT, snapshot_id INTEGER NOT NULL
);
"""

_TASK_COLUMNS = (
    "uuid", "name", "state", "worker", "args", "kwargs", "result", "exception", "traceback",
    "retries", "runtime", "received", "started", "timestamp", "clock", "root_id", "parent_id",
)  # fmt: skip


class SQLiteCamera(Polaroid):
    """Writes every snapshot to a SQLite file.

    Tables: ``snapshots`` (one row per shutter: time, counts, tasks per state as JSON),
    ``tasks`` (the latest known state of every task seen, upserted by uuid) and ``workers``
    (likewise per worker). Only tasks updated since the previous shutter are written, so a
    shutter costs in proportion to the activity, not to the State's size.

    Args:
        path: The SQLite file (created if missing).
        keep_snapshots: Rows of ``snapshots`` kept; older ones go at cleanup.
    """

    def __init__(
        self,
        state: State,
        freq: float = 1.0,
        maxrate: str | float | None = None,
        cleanup_freq: float = 3600.0,
        *,
        path: str | Path | None = None,
        keep_snapshots: int = 10_000,
    ) -> None:
        super().__init__(state, freq, maxrate, cleanup_freq)
        self.path = str(path or DEFAULT_DB)
        self.keep_snapshots = keep_snapshots
        self.db = sqlite3.connect(self.path)
        self.db.executescript(_SCHEMA)
        self._last_event_count = -1
        self._written: dict[str, Any] = {}

    def on_shutter(self, state: State) -> None:
        now = time.time()
        alive = state.alive_workers()
        counts = state.state_counts()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO snapshots (taken_at, event_count, task_count, workers_alive, states)"
                " VALUES (?, ?, ?, ?, ?)",
                (now, state.event_count, len(state.tasks), len(alive), json.dumps(counts)),
            )
            shot = cur.lastrowid
            rows = []
            for uuid, task in state.tasks.items():
                stamp = (task.timeline[-1] if task.timeline else None, len(task._keys))
                if self._written.get(uuid) == stamp:
                    continue
                self._written[uuid] = stamp
                rows.append((*(getattr(task, c) for c in _TASK_COLUMNS), shot))
            if len(self._written) > 4 * state.max_tasks_in_memory:
                self._written = {u: self._written[u] for u in state.tasks if u in self._written}
            self.db.executemany(
                f"INSERT OR REPLACE INTO tasks ({', '.join(_TASK_COLUMNS)}, snapshot_id)"
                f" VALUES ({', '.join('?' * (len(_TASK_COLUMNS) + 1))})",
                rows,
            )
            alive_names = {w.hostname for w in alive}
            self.db.executemany(
                "INSERT OR REPLACE INTO workers (hostname, alive, active, processed, freq,"
                " last_heartbeat, sw_ident, sw_ver, snapshot_id) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        w.hostname,
                        w.hostname in alive_names,
                        w.active,
                        w.processed,
                        w.freq,
                        w.heartbeats[-1] if w.heartbeats else None,
                        w.sw_ident,
                        w.sw_ver,
                        shot,
                    )
                    for w in state.workers.values()
                ],
            )

    def on_cleanup(self) -> None:
        with self.db:
            self.db.execute(
                "DELETE FROM snapshots WHERE id <= (SELECT MAX(id) FROM snapshots) - ?",
                (self.keep_snapshots,),
            )

    def close(self) -> None:
        self.db.close()


def query(
    path: str | Path, what: str = "tasks", *, state: str | None = None, name: str | None = None,
    worker: str | None = None, limit: int = 50,
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows a :class:`SQLiteCamera` wrote: ``what`` is ``tasks``, ``workers`` or
    ``snapshots``; tasks filter by ``state``, ``name`` and ``worker``, newest first.

    Raises:
        FileNotFoundError: there is no such file.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"no snapshot file at {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        if what == "tasks":
            where, args = [], []
            for column, value in (("state", state), ("name", name), ("worker", worker)):
                if value is not None:
                    where.append(f"{column} = ?")
                    args.append(value)
            sql = "SELECT * FROM tasks"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY clock DESC, timestamp DESC LIMIT ?"
            rows = db.execute(sql, (*args, limit)).fetchall()
        elif what == "workers":
            rows = db.execute(
                "SELECT * FROM workers ORDER BY hostname LIMIT ?", (limit,)
            ).fetchall()
        elif what == "snapshots":
            rows = db.execute(
                "SELECT * FROM snapshots ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        else:
            raise ValueError(f"unknown table {what!r}: use tasks, workers or snapshots")
        return [dict(row) for row in rows]
    finally:
        db.close()
