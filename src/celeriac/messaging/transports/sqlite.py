"""``sqlite:///path.db``: the embedded broker, one file shared by processes on one machine.

URLs follow SQLAlchemy: ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``.
The file is opened in WAL mode; every operation is one short transaction (one per publish
batch, fetch, ack batch), run on a dedicated thread per transport so the event loop never
blocks on disk or on another process's lock. "database is locked" is retried internally
with backoff; only a lock held for ``lock_timeout`` seconds (default 60) surfaces, as
:class:`~celeriac.exceptions.ConnectionBrokenError`.

Claims are leases: a claim sets a fresh token, ``visible_at = now + visibility_timeout``
and increments ``delivery_count`` in one ``UPDATE ... RETURNING``. A message whose lease
passed is claimable again (``redelivered=True``). Acks, rejects and extends name the
claim's token, so a holder that lost its lease cannot settle the newer claim. Leases use
the machine's wall clock, which every process on the machine shares.

Waiting without busy-polling the tables: fetchers in this process are woken at once by
local publishes; changes committed by other processes are noticed through
``PRAGMA data_version``, checked every ``polling_interval`` seconds (default 5 ms).

Transport options: ``visibility_timeout`` (s), ``polling_interval`` (s), ``lock_timeout``
(s), ``sqlite_synchronous`` (``"FULL"`` default: a returned publish survives power loss;
``"NORMAL"`` is faster and survives process crashes only).

Routing rules are those of ``memory://``: the default exchange ``""`` routes by queue name
(and so "creates" the queue), other exchanges must have been declared (by any process);
queue ``expires`` and ``message_ttl`` are honoured as there. Tables are prefixed
``broker_`` so the result backend may share the file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import orjson

from ...exceptions import ConfigurationError, ConnectionBrokenError, ConnectionClosedError
from ..entities import Exchange, Queue, route
from ..message import Message
from ._wakeup import Waiter, WaiterRegistry
from .base import ExchangeNotFound, Outgoing, Transport, new_delivery_tag
from .memory import check_outgoing, message_priority

__all__ = ["SQLiteTransport", "sqlite_path"]

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS broker_messages (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        visible_at REAL,
        lease_token INTEGER,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        delivery_tag TEXT NOT NULL,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        body BLOB NOT NULL,
        headers BLOB NOT NULL,
        properties BLOB NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        expires_at REAL
    )""",
    # Claimable now: the claim reads this index in delivery order and nothing else.
    """CREATE INDEX IF NOT EXISTS broker_messages_ready
        ON broker_messages (queue, priority DESC, id) WHERE visible_at IS NULL""",
    # Delayed (not_before) or leased: ordered by the time they become claimable.
    """CREATE INDEX IF NOT EXISTS broker_messages_waiting
        ON broker_messages (queue, visible_at, lease_token) WHERE visible_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS broker_exchanges (name TEXT PRIMARY KEY, type TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS broker_bindings (
        exchange TEXT NOT NULL, routing_key TEXT NOT NULL, queue TEXT NOT NULL,
        PRIMARY KEY (exchange, routing_key, queue)
    )""",
    """CREATE INDEX IF NOT EXISTS broker_bindings_queue ON broker_bindings (queue)""",
    """CREATE TABLE IF NOT EXISTS broker_queues (
        name TEXT PRIMARY KEY, max_priority INTEGER, expires REAL, message_ttl REAL,
        last_used REAL
    )""",
)

#: Every table and index the schema creates (checked at connect).
_SCHEMA_OBJECTS = frozenset(
    {
        "broker_messages",
        "broker_messages_ready",
        "broker_messages_waiting",
        "broker_exchanges",
        "broker_bindings",
        "broker_bindings_queue",
        "broker_queues",
    }
)

_INSERT = (
    "INSERT INTO broker_messages (queue, priority, visible_at, delivery_tag, exchange, routing_key,"
    " body, headers, properties, content_type, content_encoding, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_HAS_READY = "SELECT 1 FROM broker_messages WHERE queue = ? AND visible_at IS NULL LIMIT 1"
_NEXT_VISIBLE = (
    "SELECT MIN(visible_at) FROM broker_messages WHERE queue = ? AND visible_at IS NOT NULL"
)
_PROMOTE = (
    "UPDATE broker_messages SET visible_at = NULL, lease_token = NULL"
    " WHERE queue = ? AND visible_at IS NOT NULL AND visible_at <= ?"
)
_CLAIM = (
    "UPDATE broker_messages"
    " SET visible_at = ?, lease_token = ?, delivery_count = delivery_count + 1"
    " WHERE id IN (SELECT id FROM broker_messages WHERE queue = ? AND visible_at IS NULL"
    " ORDER BY priority DESC, id LIMIT ?)"
    " RETURNING id, priority, delivery_count, delivery_tag, exchange, routing_key, body,"
    " headers, properties, content_type, content_encoding, expires_at"
)
_ACK = "DELETE FROM broker_messages WHERE id = ? AND lease_token = ?"
_REQUEUE = (
    "UPDATE broker_messages SET visible_at = NULL, lease_token = NULL"
    " WHERE id = ? AND lease_token = ?"
)
_TTL = "SELECT message_ttl FROM broker_queues WHERE name = ?"
_UNUSED = (
    "SELECT name FROM broker_queues WHERE expires IS NOT NULL AND last_used + expires < ?"
)
_EXTEND = "UPDATE broker_messages SET visible_at = ? WHERE id = ? AND lease_token = ?"

#: Seconds between two looks for queues unused past their ``expires``.
SWEEP_INTERVAL = 0.25

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite://`` URL (SQLAlchemy's convention).

    Raises:
        ConfigurationError: no path, an in-memory database (use ``memory://``), or a query.
    """
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigurationError(
            f"sqlite URL {url!r} has a host part; use sqlite:///relative.db or "
            "sqlite:////absolute/path.db",
            key="broker_url",
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"sqlite URL {url!r} takes no query; pass options as transport options",
            key="broker_url",
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"sqlite URL {url!r} names no database file (an in-memory database cannot be "
            "shared between processes: use memory:// for that)",
            key="broker_url",
        )
    return path


#: In-process waiters by database file, so a local publish wakes local fetchers at once.
_local_lock = threading.Lock()
_local_waiters: dict[str, WaiterRegistry] = {}


def _forget_local_waiters_after_fork() -> None:
    """A forked child inherits the parent's waiters (of loops it does not run) and maybe
    a lock held by a parent thread: start afresh."""
    global _local_lock
    _local_lock = threading.Lock()
    _local_waiters.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_local_waiters_after_fork)


def _wake_local(path: str, queues: Sequence[str] | set[str]) -> None:
    with _local_lock:
        registry = _local_waiters.get(path)
        woken = registry.take(queues) if registry is not None else []
    for waiter in woken:
        waiter.wake()


class _Poll:
    """What one waiting fetch saw last (read and written on the database thread)."""

    __slots__ = ("force", "next_visible", "version")

    def __init__(self) -> None:
        self.force = True
        self.version = -1
        self.next_visible: float | None = None


class SQLiteTransport(Transport):
    """The embedded transport (see the module docstring for its rules)."""

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    supports_delayed_delivery: ClassVar[bool] = True
    polling_interval: ClassVar[float] = 0.005

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.path = sqlite_path(url)
        self._key = os.path.realpath(self.path)
        opts = self.options
        self.poll_every = float(opts.get("polling_interval", type(self).polling_interval))
        self.lock_timeout = float(opts.get("lock_timeout", 60.0))
        synchronous = str(opts.get("sqlite_synchronous", "FULL")).upper()
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"sqlite_synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
                f"got {opts['sqlite_synchronous']!r}",
                key="sqlite_synchronous",
            )
        self.synchronous = synchronous
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._rotation = 0
        #: Queues this transport declared with ``expires`` (s), and when it last said so.
        self._expiring: dict[str, float] = {}
        self._touched: dict[str, float] = {}
        self._next_sweep = 0.0

    # -- the database thread -----------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        executor = self._executor
        if executor is None:
            raise ConnectionClosedError(f"{self!r} is not connected (call connect() first)")
        if self._pid != os.getpid():
            raise ConnectionBrokenError(
                f"{self!r} was opened by process {self._pid}; a forked child must reconnect"
            )
        try:
            return executor.submit(self._guarded, fn, *args)
        except RuntimeError as exc:  # shut down by a concurrent close()
            raise ConnectionClosedError(f"{self!r} was closed") from exc

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one transaction; retry it while the file is locked; map sqlite's errors."""
        delay = 0.001
        deadline = time.monotonic() + self.lock_timeout
        while True:
            db = self._db
            if db is None:
                raise ConnectionClosedError(f"{self!r} was closed")
            try:
                return fn(db, *args)
            except sqlite3.OperationalError as exc:
                _rollback(db)
                text = str(exc).lower()
                if ("locked" in text or "busy" in text) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                    continue
                raise ConnectionBrokenError(f"sqlite database {self.path!r}: {exc}") from exc
            except sqlite3.ProgrammingError as exc:
                raise ConnectionClosedError(f"sqlite database {self.path!r}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                _rollback(db)
                raise ConnectionBrokenError(f"sqlite database {self.path!r}: {exc}") from exc
            except BaseException:
                _rollback(db)
                raise

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        if self.is_connected:
            return
        if self._executor is not None:  # inherited through fork: the thread is not ours
            self._executor = self._db = None
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="celeriac-sqlite")
        try:
            self._db = await asyncio.wrap_future(executor.submit(self._open))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        self._pid = os.getpid()

    def _open(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.001
        while True:
            db: sqlite3.Connection | None = None
            try:
                db = sqlite3.connect(
                    self.path, timeout=5.0, isolation_level=None, check_same_thread=False
                )
                _setup(db, self.synchronous)
                return db
            except sqlite3.OperationalError as exc:
                if db is not None:
                    db.close()
                text = str(exc).lower()
                if ("locked" in text or "busy" in text) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                    continue
                raise ConnectionBrokenError(
                    f"cannot open sqlite database {self.path!r}: {exc}"
                ) from exc
            except sqlite3.DatabaseError as exc:
                if db is not None:
                    db.close()
                raise ConnectionBrokenError(
                    f"cannot open sqlite database {self.path!r}: {exc}"
                ) from exc

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        db, self._db = self._db, None
        if self._pid != os.getpid():
            return  # inherited through fork: the parent still owns the file handle
        if db is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(executor.submit(db.close))
        executor.shutdown(wait=False)

    @property
    def is_connected(self) -> bool:
        return self._executor is not None and self._pid == os.getpid()

    # -- topology ----------------------------------------------------------------------

    async def declare_exchange(self, exchange: Exchange) -> None:
        if exchange.name:
            await self._run(_declare_exchange_tx, exchange)

    async def declare_queue(self, queue: Queue) -> None:
        await self._run(_declare_queue_tx, queue)
        if queue.expires is not None:
            self._expiring[queue.name] = queue.expires
        else:
            self._expiring.pop(queue.name, None)

    async def delete_queue(self, name: str) -> None:
        await self._run(_delete_queue_tx, name)
        _wake_local(self._key, (name,))

    # -- moving messages ---------------------------------------------------------------

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        for out in batch:
            check_outgoing(out)
        touched = await self._run(_publish_tx, batch)
        if touched:
            _wake_local(self._key, touched)

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Message]:
        if isinstance(queues, str):
            raise TypeError(f"fetch() takes a sequence of queue names, not the string {queues!r}")
        if not queues:
            raise ValueError("fetch() needs at least one queue name")
        if limit < 1:
            raise ValueError(f"fetch() limit must be at least 1, got {limit}")
        names = list(queues)
        deadline = time.monotonic() + timeout
        waiter = self._register(names)
        poll = _Poll()
        try:
            while True:
                start = self._rotation % len(names)
                self._rotation += 1
                claimed, due = await self._claim(names[start:] + names[:start], limit, poll)
                if claimed:
                    return claimed
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                pause = min(remaining, self.poll_every)
                if due is not None:
                    pause = min(pause, max(due, 0.0))
                if await waiter.wait(pause):
                    poll.force = True
                    self._unregister(waiter, names)
                    waiter = self._register(names)
        finally:
            self._unregister(waiter, names)

    def _register(self, names: Sequence[str]) -> Waiter:
        waiter = Waiter()
        with _local_lock:
            _local_waiters.setdefault(self._key, WaiterRegistry()).add(waiter, names)
        return waiter

    def _unregister(self, waiter: Waiter, names: Sequence[str]) -> None:
        with _local_lock:
            registry = _local_waiters.get(self._key)
            if registry is not None:
                registry.remove(waiter, names)

    async def _claim(
        self, order: list[str], limit: int, poll: _Poll
    ) -> tuple[list[Message], float | None]:
        """Claim on the database thread; if cancelled meanwhile, give the claim back."""
        future = self._submit(self._claim_tx, order, limit, poll)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            if not future.cancel():
                future.add_done_callback(self._give_back)
            raise

    def _give_back(self, future: concurrent.futures.Future[tuple[list[Message], Any]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        claimed = future.result()[0]
        if not claimed:
            return
        queues = {m.delivery_info["queue"] for m in claimed}

        def requeue(db: sqlite3.Connection) -> None:
            _settle_tx(db, _receipts(claimed), "requeue")
            _wake_local(self._key, queues)

        # Closed meanwhile: the leases will return them.
        with contextlib.suppress(ConnectionClosedError):
            self._submit(requeue)

    def _claim_tx(
        self, db: sqlite3.Connection, order: list[str], limit: int, poll: _Poll
    ) -> tuple[list[Message], float | None]:
        """Claim up to ``limit``; with nothing to claim, say in how many seconds to retry.

        Skips all work while no other connection committed (``data_version``) and no
        delayed or leased message of these queues fell due since the last look.
        """
        version = db.execute("PRAGMA data_version").fetchone()[0]
        now = time.time()
        if (
            not poll.force
            and version == poll.version
            and (poll.next_visible is None or now < poll.next_visible)
        ):
            return [], None if poll.next_visible is None else poll.next_visible - now
        if poll.force:
            self._maintain(db, order, now)
        # Read first, without the write lock: idle pollers must not queue behind writers.
        claimable: list[str] = []
        soonest: float | None = None
        for name in order:
            if db.execute(_HAS_READY, (name,)).fetchone() is not None:
                claimable.append(name)
                continue
            visible = db.execute(_NEXT_VISIBLE, (name,)).fetchone()[0]
            if visible is not None:
                if visible <= now:
                    claimable.append(name)
                elif soonest is None or visible < soonest:
                    soonest = visible
        rows: list[tuple[Any, ...]] = []
        token = secrets.randbits(62)
        if claimable:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            until = now + self.visibility_timeout
            for name in claimable:
                db.execute(_PROMOTE, (name, now))
                rows.extend(_claim_from(db, name, limit - len(rows), until, token, now))
                if len(rows) >= limit:
                    break
            db.execute("COMMIT")
        # Only now, after success: a retried transaction must look again.
        poll.version, poll.next_visible, poll.force = version, soonest, False
        if rows:
            return [_delivered(row, token) for row in rows], None
        return [], None if soonest is None else soonest - now

    def _maintain(self, db: sqlite3.Connection, names: list[str], now: float) -> None:
        """Mark expiring queues as used; delete the ones nobody used for their ``expires``."""
        expiring = self._expiring
        if expiring:
            touch = [
                (now, name)
                for name in names
                if name in expiring and now - self._touched.get(name, 0.0) > expiring[name] / 4
            ]
            if touch:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("UPDATE broker_queues SET last_used = ? WHERE name = ?", touch)
                db.execute("COMMIT")
                self._touched.update((name, when) for when, name in touch)
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        if db.execute(_UNUSED, (now,)).fetchone() is None:
            return
        db.execute("BEGIN IMMEDIATE")
        for (name,) in db.execute(_UNUSED, (now,)).fetchall():
            _drop_queue(db, name)
        db.execute("COMMIT")

    async def ack(self, messages: Sequence[Message]) -> None:
        if messages:
            await self._run(_settle_tx, _receipts(messages), "ack")

    async def reject(self, messages: Sequence[Message], requeue: bool) -> None:
        if not messages:
            return
        receipts = _receipts(messages)
        await self._run(_settle_tx, receipts, "requeue" if requeue else "ack")
        if requeue:
            _wake_local(self._key, {m.delivery_info.get("queue", "") for m in messages})

    async def extend(self, messages: Sequence[Message], seconds: float | None = None) -> None:
        if not messages:
            return
        receipts = _receipts(messages)
        until = time.time() + (self.visibility_timeout if seconds is None else seconds)
        await self._run(_extend_tx, receipts, until)

    async def purge(self, queue: str) -> int:
        return await self._run(_purge_tx, queue)

    async def queue_length(self, queue: str) -> int:
        return await self._run(_length_tx, queue)


# -- transactions (run on the database thread) ----------------------------------------


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _setup(db: sqlite3.Connection, synchronous: str) -> None:
    db.execute("PRAGMA busy_timeout = 5000")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode!r})")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    # The result backend may share the file, so ``user_version`` is not ours to use.
    present = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    if present.issuperset(_SCHEMA_OBJECTS):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _delivered(row: tuple[Any, ...], token: int) -> Message:
    (
        queue,
        id_,
        priority,
        count,
        tag,
        exchange,
        routing_key,
        body,
        headers,
        properties,
        content_type,
        content_encoding,
    ) = row
    return Message(
        body,
        orjson.loads(headers),
        orjson.loads(properties),
        content_type,
        content_encoding,
        delivery_info={
            "exchange": exchange,
            "routing_key": routing_key,
            "queue": queue,
            "priority": priority,
            "redelivered": count > 1,
        },
        delivery_tag=tag,
        redelivered=count > 1,
        delivery_count=count,
        receipt=(id_, token),
    )


def _receipts(messages: Sequence[Message]) -> list[tuple[int, int]]:
    receipts = []
    for m in messages:
        receipt = m.receipt
        if not (isinstance(receipt, tuple) and len(receipt) == 2):
            raise ValueError(
                f"{m!r} was not delivered by a sqlite:// transport (receipt {receipt!r}); "
                "only fetched messages can be settled or extended"
            )
        receipts.append(receipt)
    return receipts


def _encode(what: str, value: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise TypeError(f"message {what} cannot be stored by the sqlite transport: {exc}") from exc


def _known_exchange(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute("SELECT type FROM broker_exchanges WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def _insert_exchange(db: sqlite3.Connection, exchange: Exchange) -> None:
    known = _known_exchange(db, exchange.name)
    if known is None:
        db.execute(
            "INSERT INTO broker_exchanges (name, type) VALUES (?, ?)",
            (exchange.name, exchange.type),
        )
    elif known != exchange.type:
        raise ConfigurationError(
            f"exchange {exchange.name!r} is already declared as {known!r}; "
            f"cannot redeclare it as {exchange.type!r}",
            key=exchange.name,
        )


def _all_exchanges(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT name FROM broker_exchanges")]


def _declare_exchange_tx(db: sqlite3.Connection, exchange: Exchange) -> None:
    db.execute("BEGIN IMMEDIATE")
    _insert_exchange(db, exchange)
    db.execute("COMMIT")


def _declare_queue_tx(db: sqlite3.Connection, queue: Queue) -> None:
    db.execute("BEGIN IMMEDIATE")
    exchange = queue.effective_exchange
    if exchange.name:
        _insert_exchange(db, exchange)
    for binding in queue.all_bindings():
        if _known_exchange(db, binding.exchange) is None:
            raise ExchangeNotFound(binding.exchange, _all_exchanges(db))
    db.execute(
        "INSERT OR REPLACE INTO broker_queues"
        " (name, max_priority, expires, message_ttl, last_used) VALUES (?, ?, ?, ?, ?)",
        (queue.name, queue.max_priority, queue.expires, queue.message_ttl, time.time()),
    )
    db.executemany(
        "INSERT OR IGNORE INTO broker_bindings (exchange, routing_key, queue) VALUES (?, ?, ?)",
        [(b.exchange, b.routing_key, b.queue) for b in queue.all_bindings()],
    )
    db.execute("COMMIT")


def _delete_queue_tx(db: sqlite3.Connection, name: str) -> None:
    db.execute("BEGIN IMMEDIATE")
    _drop_queue(db, name)
    db.execute("COMMIT")


def _drop_queue(db: sqlite3.Connection, name: str) -> None:
    db.execute("DELETE FROM broker_messages WHERE queue = ?", (name,))
    db.execute("DELETE FROM broker_bindings WHERE queue = ?", (name,))
    db.execute("DELETE FROM broker_queues WHERE name = ?", (name,))


def _claim_from(
    db: sqlite3.Connection, name: str, limit: int, until: float, token: int, now: float
) -> list[tuple[Any, ...]]:
    """Claim up to ``limit`` from one queue, dropping messages past their ``message_ttl``."""
    rows: list[tuple[Any, ...]] = []
    while len(rows) < limit:
        got = db.execute(_CLAIM, (until, token, name, limit - len(rows))).fetchall()
        expired = [(r[0],) for r in got if r[-1] is not None and r[-1] <= now]
        live = [r for r in got if r[-1] is None or r[-1] > now]
        live.sort(key=lambda r: (-r[1], r[0]))
        rows.extend((name, *r[:-1]) for r in live)
        if not expired:
            break
        db.executemany("DELETE FROM broker_messages WHERE id = ?", expired)
    return rows


def _publish_tx(db: sqlite3.Connection, batch: Sequence[Outgoing]) -> set[str]:
    rows: list[tuple[Outgoing, int, str, bytes, bytes]] = []
    for out in batch:  # encode before taking the write lock
        message = out.message
        props = dict(message.properties)
        tag = message.delivery_tag or new_delivery_tag()
        props["delivery_tag"] = tag
        rows.append(
            (
                out,
                message_priority(message),
                tag,
                _encode("headers", message.headers),
                _encode("properties", props),
            )
        )
    db.execute("BEGIN IMMEDIATE")
    now = time.time()
    ttls: dict[str, float | None] = {}
    routes: dict[tuple[str, str], list[str]] = {}
    exchanges: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    inserts = []
    touched: set[str] = set()
    for out, priority, tag, headers, properties in rows:
        key = (out.exchange, out.routing_key)
        targets = routes.get(key)
        if targets is None:
            if out.exchange == "":
                targets = [out.routing_key]
            else:
                known = exchanges.get(out.exchange)
                if known is None:
                    kind = _known_exchange(db, out.exchange)
                    if kind is None:
                        raise ExchangeNotFound(out.exchange, _all_exchanges(db))
                    pairs = db.execute(
                        "SELECT routing_key, queue FROM broker_bindings WHERE exchange = ?",
                        (out.exchange,),
                    ).fetchall()
                    known = exchanges[out.exchange] = (kind, pairs)
                targets = route(known[0], out.routing_key, known[1])
            routes[key] = targets
        visible_at = out.not_before if out.not_before is not None and out.not_before > now else None
        message = out.message
        for name in targets:
            if name in ttls:
                ttl = ttls[name]
            else:
                row = db.execute(_TTL, (name,)).fetchone()
                ttl = ttls[name] = None if row is None else row[0]
            inserts.append(
                (
                    name,
                    priority,
                    visible_at,
                    tag,
                    out.exchange,
                    out.routing_key,
                    message.body,
                    headers,
                    properties,
                    message.content_type,
                    message.content_encoding,
                    None if ttl is None else now + ttl,
                )
            )
            touched.add(name)
    db.executemany(_INSERT, inserts)
    db.execute("COMMIT")
    return touched


def _settle_tx(db: sqlite3.Connection, receipts: list[tuple[int, int]], how: str) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.executemany(_ACK if how == "ack" else _REQUEUE, receipts)
    db.execute("COMMIT")


def _extend_tx(db: sqlite3.Connection, receipts: list[tuple[int, int]], until: float) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.executemany(_EXTEND, [(until, id_, token) for id_, token in receipts])
    db.execute("COMMIT")


def _purge_tx(db: sqlite3.Connection, queue: str) -> int:
    db.execute("BEGIN IMMEDIATE")
    ready = db.execute(
        "DELETE FROM broker_messages WHERE queue = ? AND visible_at IS NULL", (queue,)
    ).rowcount
    delayed = db.execute(
        "DELETE FROM broker_messages WHERE queue = ? AND visible_at IS NOT NULL"
        " AND lease_token IS NULL",
        (queue,),
    ).rowcount
    db.execute("COMMIT")
    return int(ready + delayed)


def _length_tx(db: sqlite3.Connection, queue: str) -> int:
    ready = db.execute(
        "SELECT COUNT(*) FROM broker_messages WHERE queue = ? AND visible_at IS NULL", (queue,)
    ).fetchone()[0]
    waiting = db.execute(
        "SELECT COUNT(*) FROM broker_messages WHERE queue = ? AND visible_at IS NOT NULL"
        " AND lease_token IS NULL",
        (queue,),
    ).fetchone()[0]
    return int(ready + waiting)
