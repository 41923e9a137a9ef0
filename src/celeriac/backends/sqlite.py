"""``sqlite:///path.db``: results in one SQLite file, shared by every process on the machine.

By default this is the broker's file too (``sqlite:///celeriac.db``); results live in their
own table, ``celeriac_results``. The file is in WAL mode, so readers never block the
writer. Each backend object owns one connection, used only from its own thread, so the
event loop never blocks on disk I/O. Writes run in ``BEGIN IMMEDIATE`` transactions under a
busy timeout, and a lock that outlasts it is retried with backoff: "database is locked"
reaches a caller only as a :class:`~celeriac.exceptions.ConnectionBrokenError` after
``lock_timeout`` seconds of contention.

Waiting: a write in this process wakes waiters on every loop at once; writes by other
processes are noticed by polling ``PRAGMA data_version`` (a counter SQLite bumps when
another connection commits, read without touching any table) every few milliseconds while
something waits, and the waited ids are re-read only when it changed.

Expiry: rows carry ``expires_at`` (epoch seconds, wall clock, since several processes
compare it); expired rows read as PENDING, :meth:`SQLiteBackend.cleanup` deletes them, and
writes delete a bounded batch of them now and then.

Transport options (``result_backend_transport_options``, named as the sqlite broker's):
``lock_timeout`` (s, 60), ``polling_interval`` (s, 0.005), ``max_polling_interval`` (s,
0.05, approached during a quiet spell), ``cleanup_interval`` (s, 60), ``sqlite_synchronous``
(``FULL``; ``NORMAL`` trades the last commits on power loss for speed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .. import states
from ..exceptions import ConfigurationError, ConnectionBrokenError, ConnectionClosedError
from ._waiting import Waiting, hub_for, wait_until_ready
from .base import Backend, Meta, pending_meta
from .meta import EncodedMeta, decode_meta, serialize_meta

__all__ = ["SQLiteBackend", "database_path"]

T = TypeVar("T")
logger = logging.getLogger(__name__)

TABLE = "celeriac_results"
_READY = ", ".join(f"'{s}'" for s in sorted(states.READY_STATES))
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " task_id TEXT PRIMARY KEY,"
    " status TEXT NOT NULL,"
    " content_type TEXT NOT NULL,"
    " content_encoding TEXT NOT NULL,"
    " payload BLOB NOT NULL,"
    " expires_at REAL"
    ") WITHOUT ROWID",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE}(expires_at)"
    " WHERE expires_at IS NOT NULL",
)
#: The ready-state guard of ``backends/base.py`` (see ``_waiting.may_overwrite``) in SQL:
#: an expired row is replaced; SUCCESS is never replaced; a ready state only by a ready one.
_UPSERT = (
    f"INSERT INTO {TABLE} (task_id, status, content_type, content_encoding, payload, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(task_id) DO UPDATE SET status = excluded.status,"
    " content_type = excluded.content_type, content_encoding = excluded.content_encoding,"
    " payload = excluded.payload, expires_at = excluded.expires_at"
    f" WHERE ({TABLE}.expires_at IS NOT NULL AND {TABLE}.expires_at <= ?)"
    f" OR ({TABLE}.status <> 'SUCCESS'"
    f" AND ({TABLE}.status NOT IN ({_READY}) OR excluded.status IN ({_READY})))"
)
_SELECT = (
    f"SELECT task_id, status, content_type, content_encoding, payload FROM {TABLE}"
    " WHERE task_id IN ({marks}) AND (expires_at IS NULL OR expires_at > ?)"
)
_SWEEP = (
    f"DELETE FROM {TABLE} WHERE task_id IN"
    f" (SELECT task_id FROM {TABLE} WHERE expires_at <= ? LIMIT ?)"
)
#: Ids per SELECT (well under SQLite's bound-parameter limit).
_CHUNK = 500
#: Expired rows one opportunistic sweep deletes at most (keeps a write transaction short).
_SWEEP_BATCH = 1000
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


def database_path(url: str) -> str:
    """The file a ``sqlite://`` URL names (``sqlite:///rel.db``, ``sqlite:////abs.db``).

    The same convention (SQLAlchemy's) as the sqlite broker, so one URL names one file.

    Raises:
        ConfigurationError: Not a sqlite URL, a host part or query, no path, or an
            in-memory database (which no other connection can see: use ``memory://``).
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}", key="result_backend")
    if parts.netloc:
        raise ConfigurationError(
            f"sqlite URL {url!r} has a host part; write sqlite:///relative.db or "
            "sqlite:////absolute/path.db",
            key="result_backend",
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"sqlite URL {url!r} takes no query; pass options in "
            "result_backend_transport_options",
            key="result_backend",
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"sqlite URL {url!r} names no database file (an in-memory database cannot be "
            "shared with other connections: use memory:// for an in-process result store)",
            key="result_backend",
        )
    return path


class SQLiteBackend(Backend):
    """Results in a SQLite file (see the module docstring)."""

    schemes = ("sqlite",)

    def __init__(self, url: str = "sqlite:///celeriac.db", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = database_path(url)
        opts = self.options
        self.lock_timeout = float(opts.get("lock_timeout", 60.0))
        self.polling_interval = float(opts.get("polling_interval", 0.005))
        self.max_polling_interval = max(
            float(opts.get("max_polling_interval", 0.05)), self.polling_interval
        )
        self.cleanup_interval = float(opts.get("cleanup_interval", 60.0))
        self.synchronous = str(opts.get("sqlite_synchronous", "FULL")).upper()
        if self.synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"sqlite_synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}, "
                f"got {opts.get('sqlite_synchronous')!r}",
                key="sqlite_synchronous",
            )
        self._hub = hub_for(f"sqlite://{os.path.abspath(self.path)}")
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: Waiting | None = None
        self._poller: asyncio.Task[None] | None = None
        self._last_sweep = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._conn is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="celeriac-results-sqlite"
        )
        try:
            self._conn = await self._loop.run_in_executor(self._executor, self._open)
        except BaseException as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            if isinstance(exc, sqlite3.Error):
                raise ConnectionBrokenError(f"result database {self.path!r}: {exc}") from exc
            raise
        self._waiting = Waiting(self._loop)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(
                f"cannot open result database {self.path!r}: {exc} (does the directory exist "
                "and is it writable?)",
                key="result_backend",
            ) from exc
        try:
            self._retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            for statement in _SCHEMA:
                self._retry_locked(functools.partial(conn.execute, statement))
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._waiting is not None:
            self._hub.leave(self._waiting)
            self._waiting.close(ConnectionClosedError(f"{self!r} was closed while waiting"))
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if conn is not None and executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=False)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on this backend's sqlite thread."""
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise ConnectionClosedError(f"{self!r} is not connected (call connect() first)")

        def run() -> T:
            try:
                return self._retry_locked(lambda: fn(conn))
            except sqlite3.ProgrammingError as exc:
                raise ConnectionClosedError(f"{self!r}: {exc}") from exc
            except sqlite3.Error as exc:
                raise ConnectionBrokenError(f"result database {self.path!r}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(executor, run)

    def _retry_locked(self, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying while the database reports itself locked or busy."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" not in text and "busy" not in text:
                    raise
                if time.monotonic() >= deadline:
                    raise ConnectionBrokenError(
                        f"result database {self.path!r} stayed locked for "
                        f"{self.lock_timeout}s: {exc}"
                    ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    # -- writes -------------------------------------------------------------------------

    async def store_many(self, items: Sequence[tuple[str, Meta]]) -> None:
        if not items:
            return
        rows = [(tid, serialize_meta(tid, meta, self.serializer)) for tid, meta in items]
        sweep = time.monotonic() - self._last_sweep >= self.cleanup_interval
        if sweep:
            self._last_sweep = time.monotonic()
        await self._call(lambda conn: self._write(conn, rows, sweep))
        self._hub.notify([tid for tid, enc in rows if enc.status in states.READY_STATES])

    def _write(
        self, conn: sqlite3.Connection, rows: list[tuple[str, EncodedMeta]], sweep: bool
    ) -> None:
        now = time.time()
        expires_at = now + self.expires if self.expires else None
        params = [
            (tid, e.status, e.content_type, e.content_encoding, e.body, expires_at, now)
            for tid, e in rows
        ]
        with _immediate(conn):
            conn.executemany(_UPSERT, params)
            if sweep:
                conn.execute(_SWEEP, (now, _SWEEP_BATCH))

    async def forget(self, task_ids: Sequence[str]) -> None:
        ids = list(task_ids)
        if not ids:
            return

        def delete(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                for start in range(0, len(ids), _CHUNK):
                    chunk = ids[start : start + _CHUNK]
                    marks = ", ".join("?" * len(chunk))
                    conn.execute(f"DELETE FROM {TABLE} WHERE task_id IN ({marks})", chunk)

        await self._call(delete)

    async def cleanup(self) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            with _immediate(conn):
                return conn.execute(
                    f"DELETE FROM {TABLE} WHERE expires_at <= ?", (time.time(),)
                ).rowcount

        return await self._call(delete)

    # -- reads --------------------------------------------------------------------------

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        ids = list(task_ids)
        found = await self._call(lambda conn: _read(conn, ids)) if ids else {}
        return {tid: self._decode(tid, found.get(tid)) for tid in ids}

    def _decode(self, task_id: str, row: EncodedMeta | None) -> Meta:
        if row is None:
            return pending_meta(task_id)
        return decode_meta(row.body, row.content_type, self.accept, row.content_encoding)

    async def wait_for(self, task_id: str, timeout: float | None) -> Meta:
        waiting = self._waiting
        if waiting is None:
            raise ConnectionClosedError(f"{self!r} is not connected (call connect() first)")
        self._hub.join(waiting)
        try:
            return await wait_until_ready(
                task_id, timeout, waiting, self.get_meta, on_wait=self._start_poller
            )
        finally:
            if not waiting:
                self._hub.leave(waiting)

    def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name=f"celeriac-results-poll:{self.path}"
            )

    async def _poll(self) -> None:
        """Re-read waited ids whenever another connection committed, while anyone waits."""
        waiting = self._waiting
        assert waiting is not None
        try:
            await self._poll_until_idle(waiting)
        except Exception:
            # The database failed under us: let every waiter read again and meet the
            # error itself, instead of sleeping on a poller that is gone.
            logger.warning("result poller for %s stopped", self.path, exc_info=True)
            waiting.wake(waiting.ids())

    async def _poll_until_idle(self, waiting: Waiting) -> None:
        interval = self.polling_interval
        version = await self._call(_data_version)
        changed = True  # a commit may have landed between a waiter's read and this start
        while waiting:
            if changed:
                ids = waiting.ids()
                found = await self._call(functools.partial(_read, ids=ids, ready_only=True))
                if found:
                    waiting.wake(found, {tid: self._decode(tid, row) for tid, row in found.items()})
                interval = self.polling_interval
            else:
                interval = min(interval * 1.1, self.max_polling_interval)
            await asyncio.sleep(interval)
            current = await self._call(_data_version)
            changed, version = current != version, current


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def _read(
    conn: sqlite3.Connection, ids: list[str], ready_only: bool = False
) -> dict[str, EncodedMeta]:
    now = time.time()
    out: dict[str, EncodedMeta] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        sql = _SELECT.format(marks=", ".join("?" * len(chunk)))
        if ready_only:
            sql += f" AND status IN ({_READY})"
        for tid, status, ctype, cenc, payload in conn.execute(sql, [*chunk, now]):
            out[tid] = EncodedMeta(status, ctype, cenc, bytes(payload))
    return out


class _immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error).

    IMMEDIATE takes the write lock up front, where the busy timeout applies; a deferred
    transaction upgrading from read to write can fail with "database is locked" at once.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
