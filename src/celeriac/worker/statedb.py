"""The StateDB worker step: revoked ids and the Lamport clock survive restarts (``--statedb``).

The file is JSON, written atomically (a temporary file renamed over the old one), so a
crash mid-write leaves the previous state, never a torn one:

``{"version": 1, "clock": 42, "revoked": {"<task id>": <seconds since it was revoked>}, ...}``

Ages, not monotonic stamps, are stored, because a monotonic clock restarts with the
machine. On load every id keeps its remaining lifetime, so the revoked set stays as
bounded and as expiring as in memory (``REVOKES_MAX`` ids, ``REVOKE_EXPIRES`` seconds).
It is saved soon after every revoke command, every :data:`SAVE_INTERVAL` seconds when
something changed, and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.tasks import cancel_and_wait
from .bootsteps import Step
from .components import Pool

if TYPE_CHECKING:
    from .worker import WorkController

__all__ = ["StateDB", "Persistent", "SAVE_INTERVAL"]

logger = logging.getLogger("celeriac.worker.statedb")

#: Seconds between two periodic saves (only when something changed).
SAVE_INTERVAL = 10.0
#: Delay (s) of the save that follows a revoke command (coalesces bursts of revokes).
SAVE_SOON_DELAY = 0.2
FORMAT_VERSION = 1


class Persistent:
    """Loads and saves one worker's revoked ids and clock.

    Args:
        path: The state file.
        worker: The worker whose ``state.revoked`` and ``clock`` are kept.
    """

    def __init__(self, path: str | os.PathLike[str], worker: WorkController) -> None:
        self.path = Path(path)
        self.worker = worker
        self._handle: asyncio.TimerHandle | None = None
        self._saved_mark: tuple[int, int, Any] | None = None
        self.saves = 0

    def __repr__(self) -> str:
        return f"<Persistent {self.path}>"

    def _mark(self) -> tuple[int, int, Any]:
        revoked = self.worker.state.revoked
        newest = next(reversed(revoked._data), None) if len(revoked) else None
        return (len(revoked), self.worker.clock.value, newest)

    def load(self) -> int:
        """Merge the file into the worker's state; returns how many ids it held."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        try:
            data = json.loads(raw)
            revoked = data.get("revoked") or {}
            clock = int(data.get("clock") or 0)
        except (ValueError, AttributeError, TypeError) as exc:
            logger.error("statedb %s is unreadable (%s); starting without it", self.path, exc)
            return 0
        now = time.monotonic()
        target = self.worker.state.revoked
        stamps = {}
        for task_id, age in revoked.items():
            if isinstance(age, int | float) and not isinstance(age, bool):
                stamps[str(task_id)] = now - max(float(age), 0.0)
        target.update(stamps)
        self.worker.clock.adjust(clock)
        self._saved_mark = self._mark()
        logger.info("statedb: %d revoked id(s), clock %d from %s", len(stamps), clock, self.path)
        return len(stamps)

    def save(self) -> None:
        """Write the file now (atomically)."""
        revoked = self.worker.state.revoked
        revoked.purge()
        now = time.monotonic()
        data = {
            "version": FORMAT_VERSION,
            "clock": self.worker.clock.value,
            "revoked": {k: round(now - v, 3) for k, v in revoked.as_dict().items()},
            "saved_at": time.time(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._saved_mark = self._mark()
        self.saves += 1

    def save_if_changed(self) -> bool:
        if self._mark() == self._saved_mark:
            return False
        self.save()
        return True

    def save_soon(self) -> None:
        """Save shortly (a burst of revokes is written once)."""
        if self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(SAVE_SOON_DELAY, self._save_now)

    def _save_now(self) -> None:
        self._handle = None
        try:
            self.save()
        except OSError as exc:
            logger.error("statedb: cannot write %s: %s", self.path, exc)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class StateDB(Step):
    """``--statedb PATH``: load at start, save periodically and at stop."""

    label = "StateDB"
    requires = (Pool,)

    def __init__(self, parent: WorkController, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.task: asyncio.Task[None] | None = None

    def include_if(self, w: WorkController) -> bool:
        return bool(getattr(w, "statedb_path", None))

    def create(self, w: WorkController) -> None:
        assert w.statedb_path is not None
        w.statedb = Persistent(w.statedb_path, w)
        w.statedb.load()

    async def start(self, w: WorkController) -> None:
        self.task = asyncio.ensure_future(self._periodic(w.statedb))

    async def _periodic(self, db: Persistent) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            try:
                db.save_if_changed()
            except OSError as exc:
                logger.error("statedb: cannot write %s: %s", db.path, exc)

    async def stop(self, w: WorkController) -> None:
        task, self.task = self.task, None
        await cancel_and_wait(task)
        db = w.statedb
        if db is not None:
            db.cancel()
            try:
                db.save()
            except OSError as exc:
                logger.error("statedb: cannot write %s at shutdown: %s", db.path, exc)

    async def terminate(self, w: WorkController) -> None:
        await self.stop(w)
