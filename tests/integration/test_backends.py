"""Result backends: one set of behaviours, run against every store.

``memory`` and ``sqlite`` always run; ``redis`` runs when ``celeriac.backends.redis`` exists
and Redis answers on 127.0.0.1:6379 (skipped otherwise, a failure under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import sqlite3
import sys
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from celeriac import states
from celeriac.backends import DisabledBackend, get_backend_cls
from celeriac.backends.base import Backend
from celeriac.backends.meta import exception_from_meta, make_meta
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.exceptions import (
    ConfigurationError,
    ConnectionClosedError,
    ContentDisallowed,
    ResultTimeoutError,
)

pytestmark = pytest.mark.asyncio

OpenBackend = Callable[..., Awaitable[Backend]]


def _require_redis() -> None:
    reason = None
    if importlib.util.find_spec("celeriac.backends.redis") is None:
        reason = "redis result backend not available (celeriac.backends.redis)"
    else:
        try:
            socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        except OSError:
            reason = "redis not reachable on 127.0.0.1:6379"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    _require_redis()
    return "redis://127.0.0.1:6379/15"


@pytest_asyncio.fixture
async def open_backend(backend_url: str) -> AsyncIterator[OpenBackend]:
    made: list[Backend] = []

    async def open_(url: str | None = None, **kwargs: Any) -> Backend:
        url = url or backend_url
        backend = get_backend_cls(url)(url, **kwargs)
        await backend.connect()
        made.append(backend)
        return backend

    yield open_
    for backend in made:
        await backend.close()


def _id() -> str:
    return str(uuid.uuid4())


# -- store and read -------------------------------------------------------------------------


async def test_unknown_id_reads_pending(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    tid = _id()
    meta = await backend.get_meta(tid)
    assert (meta["status"], meta["result"], meta["task_id"]) == (states.PENDING, None, tid)


async def test_stored_meta_reads_back_and_get_many_mixes_known_and_unknown(
    open_backend: OpenBackend,
) -> None:
    backend = await open_backend()
    a, b, unknown = _id(), _id(), _id()
    await backend.store_many(
        [(a, make_meta(a, states.SUCCESS, {"sum": 5})), (b, make_meta(b, states.STARTED))]
    )
    metas = await backend.get_many([a, b, unknown])
    assert metas[a]["status"] == states.SUCCESS and metas[a]["result"] == {"sum": 5}
    assert metas[b]["status"] == states.STARTED
    assert metas[unknown]["status"] == states.PENDING


async def test_failure_round_trips_to_the_same_exception(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    tid = _id()
    await backend.store(tid, make_meta(tid, states.FAILURE, KeyError("k"), "Traceback (x)"))
    meta = await backend.get_meta(tid)
    assert meta["traceback"] == "Traceback (x)"
    exc = exception_from_meta(meta["result"])
    assert type(exc) is KeyError and exc.args == ("k",)


@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        (states.SUCCESS, states.STARTED, states.SUCCESS),
        (states.SUCCESS, states.FAILURE, states.SUCCESS),
        (states.FAILURE, states.RETRY, states.FAILURE),
        (states.REVOKED, states.STARTED, states.REVOKED),
        (states.FAILURE, states.SUCCESS, states.SUCCESS),
        (states.STARTED, states.RETRY, states.RETRY),
        (states.RETRY, states.STARTED, states.STARTED),
    ],
)
async def test_ready_state_guard(
    open_backend: OpenBackend, first: str, second: str, kept: str
) -> None:
    backend = await open_backend()
    tid = _id()
    await backend.store(tid, make_meta(tid, first, 1))
    await backend.store(tid, make_meta(tid, second, 2))
    assert (await backend.get_meta(tid))["status"] == kept


async def test_guard_applies_item_by_item_inside_one_batch(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    tid = _id()
    await backend.store_many(
        [
            (tid, make_meta(tid, states.STARTED)),
            (tid, make_meta(tid, states.SUCCESS, "done")),
            (tid, make_meta(tid, states.STARTED)),
        ]
    )
    meta = await backend.get_meta(tid)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, "done")


async def test_unencodable_result_is_stored_as_failure(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    tid = _id()
    await backend.store(tid, make_meta(tid, states.SUCCESS, object()))
    meta = await backend.get_meta(tid)
    assert meta["status"] == states.FAILURE
    assert meta["result"]["exc_type"] == "EncodeError"


async def test_reader_refuses_a_serializer_outside_its_accept_list(
    open_backend: OpenBackend,
) -> None:
    writer = await open_backend(serializer="msgpack", accept=["msgpack"])
    reader = await open_backend(accept=["json"])
    tid = _id()
    await writer.store(tid, make_meta(tid, states.SUCCESS, 1))
    assert (await writer.get_meta(tid))["result"] == 1
    with pytest.raises(ContentDisallowed):
        await reader.get_meta(tid)


# -- forget and expiry ------------------------------------------------------------------------


async def test_forget_makes_results_pending(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    a, b = _id(), _id()
    await backend.store_many(
        [(a, make_meta(a, states.SUCCESS, 1)), (b, make_meta(b, states.SUCCESS, 2))]
    )
    await backend.forget([a, _id()])
    metas = await backend.get_many([a, b])
    assert (metas[a]["status"], metas[b]["status"]) == (states.PENDING, states.SUCCESS)


async def test_expired_results_read_pending_and_cleanup_deletes_them(
    open_backend: OpenBackend,
) -> None:
    backend = await open_backend(expires=0.2)
    tid = _id()
    await backend.store(tid, make_meta(tid, states.SUCCESS, 1))
    assert (await backend.get_meta(tid))["status"] == states.SUCCESS
    await asyncio.sleep(0.3)
    assert (await backend.get_meta(tid))["status"] == states.PENDING
    removed = await backend.cleanup()
    # A store with native expiry (Redis TTLs) has already deleted the record itself.
    assert removed == 0 if backend.expires_natively else removed >= 1
    assert await backend.cleanup() == 0


async def test_an_expired_success_no_longer_guards(open_backend: OpenBackend) -> None:
    backend = await open_backend(expires=0.2)
    tid = _id()
    await backend.store(tid, make_meta(tid, states.SUCCESS, 1))
    await asyncio.sleep(0.3)
    await backend.store(tid, make_meta(tid, states.STARTED))
    assert (await backend.get_meta(tid))["status"] == states.STARTED


async def test_results_without_expiry_are_kept(open_backend: OpenBackend) -> None:
    backend = await open_backend(expires=None)
    tid = _id()
    await backend.store(tid, make_meta(tid, states.SUCCESS, 1))
    assert await backend.cleanup() == 0
    assert (await backend.get_meta(tid))["status"] == states.SUCCESS


# -- waiting --------------------------------------------------------------------------------


async def test_wait_for_returns_once_a_ready_state_is_stored(open_backend: OpenBackend) -> None:
    waiter, writer = await open_backend(), await open_backend()
    tid = _id()

    async def work() -> None:
        await asyncio.sleep(0.05)
        await writer.store(tid, make_meta(tid, states.STARTED))
        await asyncio.sleep(0.05)
        await writer.store(tid, make_meta(tid, states.SUCCESS, 42))

    job = asyncio.create_task(work())
    meta = await waiter.wait_for(tid, timeout=10)
    await job
    assert (meta["status"], meta["result"]) == (states.SUCCESS, 42)


async def test_wait_for_a_ready_result_returns_even_with_zero_timeout(
    open_backend: OpenBackend,
) -> None:
    backend = await open_backend()
    tid = _id()
    await backend.store(tid, make_meta(tid, states.REVOKED, None))
    assert (await backend.wait_for(tid, timeout=0))["status"] == states.REVOKED


async def test_wait_for_times_out_with_result_timeout_error(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    tid = _id()
    await backend.store(tid, make_meta(tid, states.STARTED))
    with pytest.raises(ResultTimeoutError, match="STARTED") as info:
        await backend.wait_for(tid, timeout=0.05)
    assert isinstance(info.value, TimeoutError)


async def test_many_waiters_on_one_id_all_wake(open_backend: OpenBackend) -> None:
    backends = [await open_backend() for _ in range(3)]
    tid = _id()
    waits = [asyncio.create_task(b.wait_for(tid, timeout=10)) for b in backends for _ in range(2)]
    await asyncio.sleep(0.05)
    await backends[0].store(tid, make_meta(tid, states.SUCCESS, "x"))
    metas = await asyncio.gather(*waits)
    assert [m["result"] for m in metas] == ["x"] * 6


async def test_a_write_from_another_thread_and_loop_wakes_the_waiter(
    open_backend: OpenBackend, backend_url: str
) -> None:
    backend = await open_backend()
    tid = _id()
    errors: list[BaseException] = []

    def other_loop() -> None:
        async def store() -> None:
            await asyncio.sleep(0.05)
            writer = get_backend_cls(backend_url)(backend_url)
            await writer.connect()
            try:
                await writer.store(tid, make_meta(tid, states.SUCCESS, "from thread"))
            finally:
                await writer.close()

        try:
            asyncio.run(store())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_loop)
    thread.start()
    meta = await backend.wait_for(tid, timeout=10)
    thread.join()
    assert errors == []
    assert meta["result"] == "from thread"


async def test_closing_a_backend_fails_its_waiters(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    waiting = asyncio.create_task(backend.wait_for(_id(), timeout=10))
    await asyncio.sleep(0.05)
    await backend.close()
    with pytest.raises(ConnectionClosedError):
        await waiting


# -- sqlite specifics ---------------------------------------------------------------------------

_WAITER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from celeriac.backends.sqlite import SQLiteBackend

    async def main():
        backend = SQLiteBackend(sys.argv[1])
        await backend.connect()
        print("ready", flush=True)
        meta = await backend.wait_for(sys.argv[2], 30)
        print(meta["status"], meta["result"], flush=True)
        await backend.close()

    asyncio.run(main())
    """
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shared.db'}"


async def test_sqlite_waiters_in_other_processes_see_the_result(sqlite_url: str) -> None:
    tid = _id()
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WAITER_SCRIPT, sqlite_url, tid,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line.strip() == b"ready"
        await asyncio.sleep(0.2)  # let them start waiting
        writer = SQLiteBackend(sqlite_url)
        await writer.connect()
        await writer.store(tid, make_meta(tid, states.SUCCESS, 7))
        await writer.close()
        outputs = [await asyncio.wait_for(child.communicate(), 30) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert [out.strip() for out, _ in outputs] == [b"SUCCESS 7"] * 3
    assert [child.returncode for child in children] == [0, 0, 0]


async def test_sqlite_write_waits_out_another_connections_lock(sqlite_url: str) -> None:
    backend = SQLiteBackend(sqlite_url)
    await backend.connect()
    path = sqlite_url[len("sqlite:///") :]
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(5)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        locked.wait(5)
        tid = _id()
        store = asyncio.create_task(backend.store(tid, make_meta(tid, states.SUCCESS, 1)))
        await asyncio.sleep(0.2)
        assert not store.done()  # blocked behind the lock, not failed
        release.set()
        await asyncio.wait_for(store, 10)
        assert (await backend.get_meta(tid))["status"] == states.SUCCESS
    finally:
        release.set()
        holder.join()
        await backend.close()


async def test_sqlite_writes_sweep_expired_rows_now_and_then(sqlite_url: str) -> None:
    backend = SQLiteBackend(sqlite_url, expires=0.1, options={"cleanup_interval": 0})
    await backend.connect()
    try:
        old = _id()
        await backend.store(old, make_meta(old, states.SUCCESS, 1))
        await asyncio.sleep(0.2)
        new = _id()
        await backend.store(new, make_meta(new, states.SUCCESS, 2))
    finally:
        await backend.close()
    conn = sqlite3.connect(sqlite_url[len("sqlite:///") :])
    ids = {row[0] for row in conn.execute("SELECT task_id FROM celeriac_results")}
    conn.close()
    assert ids == {new}


async def test_sqlite_results_table_lives_beside_the_broker_tables(sqlite_url: str) -> None:
    from celeriac.messaging.connection import Connection

    broker = Connection(sqlite_url)
    await broker.connect()
    backend = SQLiteBackend(sqlite_url)
    await backend.connect()
    try:
        tid = _id()
        await backend.store(tid, make_meta(tid, states.SUCCESS, 1))
        assert (await backend.get_meta(tid))["result"] == 1
    finally:
        await backend.close()
        await broker.close()


async def test_sqlite_use_before_connect_is_a_clear_error(sqlite_url: str) -> None:
    backend = SQLiteBackend(sqlite_url)
    with pytest.raises(ConnectionClosedError, match="connect"):
        await backend.get_meta("x")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://host/x.db", "host part"),
        ("sqlite:///x.db?mode=ro", "no query"),
        ("sqlite://", "no database file"),
    ],
)
async def test_sqlite_bad_urls_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        SQLiteBackend(url)


async def test_sqlite_unopenable_file_is_a_clear_error(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'missing-dir' / 'r.db'}")
    with pytest.raises(ConfigurationError, match="cannot open result database"):
        await backend.connect()


# -- memory specifics, selection, disabled ----------------------------------------------------


async def test_memory_stores_are_shared_by_url_and_separate_by_name() -> None:
    name = uuid.uuid4().hex
    a = get_backend_cls("memory://")(f"memory://{name}")
    b = get_backend_cls("memory://")(f"memory://{name}")
    other = get_backend_cls("memory://")(f"memory://{name}-other")
    tid = _id()
    await a.store(tid, make_meta(tid, states.SUCCESS, 1))
    assert (await b.get_meta(tid))["status"] == states.SUCCESS
    assert (await other.get_meta(tid))["status"] == states.PENDING


async def test_get_backend_cls_by_scheme() -> None:
    assert get_backend_cls("sqlite:///x.db") is SQLiteBackend
    assert get_backend_cls(None) is DisabledBackend
    assert get_backend_cls("disabled") is DisabledBackend
    unknown = r"unknown result backend scheme 'mongodb'.*memory"
    with pytest.raises(ConfigurationError, match=unknown):
        get_backend_cls("mongodb://user:secret@host/db")
    with pytest.raises(ConfigurationError) as info:
        get_backend_cls("mongodb://user:secret@host/db")
    assert "secret" not in str(info.value)


async def test_disabled_backend_drops_writes_and_refuses_reads() -> None:
    backend = DisabledBackend(None)
    await backend.connect()
    await backend.store("t", make_meta("t", states.SUCCESS, 1))
    with pytest.raises(ConfigurationError, match="no result backend configured"):
        await backend.get_meta("t")
    with pytest.raises(ConfigurationError, match="no result backend configured"):
        await backend.wait_for("t", 1)
