"""Results cross between celeriac and the real Celery over Redis, in both directions.

celeriac writes, Celery reads: ``CeleryResult(id).get()`` returns the value,
re-raises a failure with its type, and a Celery client already waiting on pub/sub is woken
by celeriac's write. Celery writes (``RedisBackend.store_result``), celeriac reads: the
backend's meta, the exception rebuilt, and celeriac's own ``AsyncResult.get()``.

Redis database 14, every test under its own ``global_keyprefix``, keys deleted afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celeriac import states
from celeriac.app import Celeriac
from celeriac.backends.meta import exception_from_meta, make_meta
from celeriac.backends.redis import RedisBackend
from celeriac.result import AsyncResult
from tests.redis_keys import delete_matching

celery = pytest.importorskip("celery")
CeleryResult = pytest.importorskip("celery.result").AsyncResult

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("redis_service")]

URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def prefix() -> Iterator[str]:
    # No trailing separator: both sides must apply Celery's underscore rule alike.
    value = f"interop{uuid.uuid4().hex[:10]}"
    yield value
    client = redis.Redis.from_url(URL)
    delete_matching(client, f"{value}_*")
    client.close()


@pytest.fixture
def celery_app(prefix: str) -> Iterator[Any]:
    app = celery.Celery("interop", broker="memory://", backend=URL, set_as_current=False)
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    app.conf.accept_content = ["json"]
    yield app
    app.close()


@pytest.fixture
def celeriac_app(prefix: str) -> Iterator[Celeriac]:
    app = Celeriac(
        "interop",
        broker="memory://",
        backend=URL,
        result_backend_transport_options={"global_keyprefix": prefix},
        set_as_current=False,
    )
    yield app
    app.close()


def _store(prefix: str, task_id: str, meta: dict[str, Any]) -> None:
    """Store one meta with a celeriac backend, from this (sync) test."""

    async def run() -> None:
        backend = RedisBackend(URL, options={"global_keyprefix": prefix})
        await backend.connect()
        try:
            await backend.store(task_id, meta)
        finally:
            await backend.close()

    asyncio.run(run())


def _read(prefix: str, task_id: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        backend = RedisBackend(URL, options={"global_keyprefix": prefix})
        await backend.connect()
        try:
            return await backend.get_meta(task_id)
        finally:
            await backend.close()

    return asyncio.run(run())


# -- celeriac writes, Celery reads --------------------------------------------------------


def test_celery_reads_a_celeriac_success(celery_app: Any, prefix: str) -> None:
    tid = str(uuid.uuid4())
    _store(prefix, tid, make_meta(tid, states.SUCCESS, {"sum": 5, "items": [1, 2]}))
    result = CeleryResult(tid, app=celery_app)
    assert result.get(timeout=10) == {"sum": 5, "items": [1, 2]}
    assert result.state == "SUCCESS" and result.date_done is not None


def test_celery_reraises_a_celeriac_failure_with_its_type(celery_app: Any, prefix: str) -> None:
    tid = str(uuid.uuid4())
    meta = make_meta(tid, states.FAILURE, ValueError("bad value", 7), "Traceback (most recent)")
    _store(prefix, tid, meta)
    result = CeleryResult(tid, app=celery_app)
    with pytest.raises(ValueError) as info:
        result.get(timeout=10)
    assert info.value.args == ("bad value", 7)
    assert result.traceback == "Traceback (most recent)"


def test_a_waiting_celery_client_is_woken_by_a_celeriac_write(
    celery_app: Any, prefix: str
) -> None:
    # Given a Celery client already blocked in get() (subscribed on the result channel)
    tid = str(uuid.uuid4())
    outcome: list[Any] = []

    def wait() -> None:
        try:
            outcome.append(CeleryResult(tid, app=celery_app).get(timeout=20))
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    client = redis.Redis.from_url(URL)
    channel = f"{prefix}_celery-task-meta-{tid}"
    try:
        for _ in range(500):
            if client.pubsub_numsub(channel)[0][1]:
                break
            threading.Event().wait(0.01)
        else:
            pytest.fail("the Celery client never subscribed")
        # When celeriac stores the result
        _store(prefix, tid, make_meta(tid, states.SUCCESS, "woken"))
        waiter.join(20)
    finally:
        client.close()
    # Then the Celery client returns it
    assert outcome == ["woken"]


def test_celerys_dedup_guard_keeps_a_celeriac_success(celery_app: Any, prefix: str) -> None:
    tid = str(uuid.uuid4())
    _store(prefix, tid, make_meta(tid, states.SUCCESS, 1))
    celery_app.backend.store_result(tid, None, "STARTED")
    assert _read(prefix, tid)["status"] == states.SUCCESS


# -- Celery writes, celeriac reads --------------------------------------------------------


def test_celeriac_reads_a_celery_success_and_failure(celery_app: Any, prefix: str) -> None:
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    celery_app.backend.store_result(ok, {"sum": 5}, "SUCCESS")
    celery_app.backend.store_result(bad, KeyError("missing"), "FAILURE", traceback="TB")
    meta = _read(prefix, ok)
    assert (meta["status"], meta["result"], meta["task_id"]) == ("SUCCESS", {"sum": 5}, ok)
    failure = _read(prefix, bad)
    assert failure["status"] == "FAILURE" and failure["traceback"] == "TB"
    exc = exception_from_meta(failure["result"])
    assert type(exc) is KeyError and exc.args == ("missing",)


def test_celeriac_async_result_gets_what_celery_stored(
    celery_app: Any, celeriac_app: Celeriac
) -> None:
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    celery_app.backend.store_result(ok, [1, "two", None], "SUCCESS")
    celery_app.backend.store_result(bad, ValueError("no", 3), "FAILURE")
    assert AsyncResult(ok, app=celeriac_app).get(timeout=10) == [1, "two", None]
    with pytest.raises(ValueError) as info:
        AsyncResult(bad, app=celeriac_app).get(timeout=10)
    assert info.value.args == ("no", 3)


def test_celeriac_waiter_is_woken_by_a_celery_write(
    celery_app: Any, celeriac_app: Celeriac, prefix: str
) -> None:
    tid = str(uuid.uuid4())
    timer = threading.Timer(0.2, celery_app.backend.store_result, (tid, "late", "SUCCESS"))
    timer.start()
    try:
        assert AsyncResult(tid, app=celeriac_app).get(timeout=20) == "late"
    finally:
        timer.join()


def test_our_guard_keeps_a_celery_success(celery_app: Any, prefix: str) -> None:
    tid = str(uuid.uuid4())
    celery_app.backend.store_result(tid, 42, "SUCCESS")
    _store(prefix, tid, make_meta(tid, states.STARTED))
    assert _read(prefix, tid)["result"] == 42
