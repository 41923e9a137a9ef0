"""AsyncResult over an in-process (memory://) result store, sync and async faces."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from celeriac import states
from celeriac.app import Celeriac
from celeriac.backends.memory import MemoryBackend
from celeriac.backends.meta import make_meta
from celeriac.exceptions import (
    ConfigurationError,
    RemoteTaskError,
    ResultTimeoutError,
    TaskRevokedError,
)
from celeriac.result import AsyncResult, result_from_tuple
from celeriac.utils import portal


class PaymentDeclined(Exception):
    """An exception defined next to a registered task: the client may rebuild it."""


@pytest.fixture
def app() -> Iterator[Celeriac]:
    app = Celeriac(
        "test-result",
        broker="memory://",
        backend=f"memory://{uuid.uuid4().hex}",
        set_as_current=False,
    )

    @app.task(name="tests.charge")
    def charge(amount: int) -> int:
        raise PaymentDeclined(amount)

    yield app
    app.close()


def store(
    app: Celeriac, task_id: str, status: str, result: object = None, **kwargs: object
) -> None:
    """Write a meta straight into the app's memory store, as a worker would."""
    backend = MemoryBackend(app.conf.result_backend)
    asyncio.run(backend.store(task_id, make_meta(task_id, status, result, **kwargs)))  # type: ignore[arg-type]


def new_id() -> str:
    return str(uuid.uuid4())


# -- identity -------------------------------------------------------------------------------


def test_identity_repr_equality_and_hash(app: Celeriac) -> None:
    tid = new_id()
    res = AsyncResult(tid, app)
    assert repr(res) == f"<AsyncResult: {tid}>"
    assert str(res) == tid and res.task_id == tid
    assert res == AsyncResult(tid, app) and res == tid and res != AsyncResult(new_id(), app)
    assert len({res, AsyncResult(tid, app)}) == 1


def test_empty_id_is_refused() -> None:
    with pytest.raises(ValueError, match="task id"):
        AsyncResult("")


def test_as_tuple_round_trips_with_parents(app: Celeriac) -> None:
    parent = AsyncResult("p", app)
    child = AsyncResult("c", app, parent=parent)
    assert child.as_tuple() == (("c", (("p", None), None)), None)
    rebuilt = result_from_tuple(child.as_tuple(), app)
    assert rebuilt == child and rebuilt.parent == parent
    with pytest.raises(ValueError, match="not a result tuple"):
        result_from_tuple("nope", app)


def test_pickles_by_id_with_its_parent(app: Celeriac) -> None:
    res = AsyncResult("abc", app, parent=AsyncResult("p", app))
    copy = pickle.loads(pickle.dumps(res))
    assert repr(copy) == "<AsyncResult: abc>" and copy == res
    assert copy.as_tuple() == res.as_tuple()


# -- reading ----------------------------------------------------------------------------------


def test_unknown_task_is_pending(app: Celeriac) -> None:
    res = AsyncResult(new_id(), app)
    assert (res.state, res.status, res.result) == (states.PENDING, states.PENDING, None)
    assert not res.ready()
    assert res.date_done is None


def test_state_is_read_fresh_until_ready_then_cached(app: Celeriac) -> None:
    tid = new_id()
    res = AsyncResult(tid, app)
    store(app, tid, states.STARTED, {"pid": 1, "hostname": "w@h"})
    assert res.state == states.STARTED and res.info == {"pid": 1, "hostname": "w@h"}
    store(app, tid, states.SUCCESS, 3)
    assert (res.state, res.result) == (states.SUCCESS, 3)
    assert res.successful() and not res.failed()
    # Once ready the handle no longer reads the store: a later delete does not change it
    asyncio.run(MemoryBackend(app.conf.result_backend).forget([tid]))
    assert res.state == states.SUCCESS
    assert AsyncResult(tid, app).state == states.PENDING


def test_success_metadata_and_extended_fields(app: Celeriac) -> None:
    tid = new_id()
    store(
        app, tid, states.SUCCESS, 5, traceback=None,
        extended={"name": "tests.add", "args": [2, 3], "kwargs": {"x": 1}, "worker": "w1@h",
                  "retries": 1, "queue": "celery"},
    )
    res = AsyncResult(tid, app)
    assert (res.name, res.args, res.kwargs, res.worker, res.retries, res.queue) == (
        "tests.add", [2, 3], {"x": 1}, "w1@h", 1, "celery",
    )
    done = res.date_done
    assert isinstance(done, datetime) and done.tzinfo is not None
    assert abs((datetime.now(UTC) - done).total_seconds()) < 60


def test_name_falls_back_to_the_name_given(app: Celeriac) -> None:
    assert AsyncResult(new_id(), app, task_name="tests.charge").name == "tests.charge"


def test_failure_result_is_the_rebuilt_exception(app: Celeriac) -> None:
    tid = new_id()
    store(app, tid, states.FAILURE, PaymentDeclined(12), traceback="Traceback: declined")
    res = AsyncResult(tid, app)
    assert res.failed() and res.ready()
    assert type(res.result) is PaymentDeclined  # its module defines a registered task
    assert res.traceback == "Traceback: declined"


# -- get ------------------------------------------------------------------------------------


def test_get_returns_the_value(app: Celeriac) -> None:
    tid = new_id()
    store(app, tid, states.SUCCESS, {"ok": True})
    assert AsyncResult(tid, app).get(timeout=5) == {"ok": True}


def test_get_raises_the_task_exception_with_the_remote_traceback(app: Celeriac) -> None:
    tid = new_id()
    store(app, tid, states.FAILURE, PaymentDeclined(12), traceback="Traceback: in charge()")
    res = AsyncResult(tid, app)
    with pytest.raises(PaymentDeclined) as info:
        res.get(timeout=5)
    assert info.value.args == (12,)
    assert any("in charge()" in note for note in info.value.__notes__)
    # propagate=False hands the exception back instead
    assert isinstance(res.get(timeout=5, propagate=False), PaymentDeclined)


def test_exceptions_from_unregistered_modules_arrive_as_remote_errors(app: Celeriac) -> None:
    tid = new_id()
    data = {"exc_type": "Boom", "exc_message": ["x"], "exc_module": "evil"}
    store(app, tid, states.FAILURE, data)
    with pytest.raises(RemoteTaskError, match=r"evil\.Boom"):
        AsyncResult(tid, app).get(timeout=5)


def test_revoked_raises_task_revoked_error(app: Celeriac) -> None:
    tid = new_id()
    store(app, tid, states.REVOKED, TaskRevokedError("revoked"))
    with pytest.raises(TaskRevokedError):
        AsyncResult(tid, app).get(timeout=5)


def test_get_waits_for_a_result_stored_later(app: Celeriac) -> None:
    tid = new_id()
    res = AsyncResult(tid, app)

    async def finish_later() -> None:
        await asyncio.sleep(0.1)
        await MemoryBackend(app.conf.result_backend).store(tid, make_meta(tid, states.SUCCESS, 9))

    # The write happens on the portal loop while this thread blocks in get()
    future = asyncio.run_coroutine_threadsafe(finish_later(), portal.get_loop())
    assert res.get(timeout=10) == 9
    future.result(5)


def test_get_times_out(app: Celeriac) -> None:
    with pytest.raises(ResultTimeoutError, match=r"not ready within 0\.05s"):
        AsyncResult(new_id(), app).get(timeout=0.05)


def test_sync_get_on_the_portal_thread_is_refused(app: Celeriac) -> None:
    res = AsyncResult(new_id(), app)

    async def call_sync_get() -> None:
        res.get(timeout=1)

    with pytest.raises(RuntimeError, match="portal loop"):
        portal.run_on_portal(call_sync_get())


def test_sync_get_inside_a_running_task_is_refused(app: Celeriac) -> None:
    task = app.tasks["tests.charge"]
    token = task.push_request({"id": new_id(), "is_eager": False})
    try:
        with pytest.raises(RuntimeError, match=r"Never call result\.get"):
            AsyncResult(new_id(), app).get(timeout=1)
    finally:
        task.pop_request(token)


def test_forget_deletes_the_result(app: Celeriac) -> None:
    tid = new_id()
    store(app, tid, states.SUCCESS, 1)
    res = AsyncResult(tid, app)
    assert res.get(timeout=5) == 1
    res.forget()
    assert res.state == states.PENDING


def test_without_a_result_backend_reads_fail_clearly() -> None:
    app = Celeriac("no-backend", broker="memory://", backend="disabled", set_as_current=False)
    try:
        with pytest.raises(ConfigurationError, match="no result backend configured"):
            AsyncResult(new_id(), app).get(timeout=1)
    finally:
        app.close()


# -- async face -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_await_result_waits_on_the_running_loop(app: Celeriac) -> None:
    tid = new_id()
    res = AsyncResult(tid, app)

    async def finish_later() -> None:
        await asyncio.sleep(0.05)
        backend = await app.get_backend()
        await backend.store(tid, make_meta(tid, states.SUCCESS, "async"))

    job = asyncio.create_task(finish_later())
    assert await res == "async"
    await job
    assert await res.state_async() == states.SUCCESS
    await app.aclose()


@pytest.mark.asyncio
async def test_get_async_propagates_and_forget_async_clears(app: Celeriac) -> None:
    tid = new_id()
    backend = await app.get_backend()
    await backend.store(tid, make_meta(tid, states.FAILURE, PaymentDeclined(1)))
    res = AsyncResult(tid, app)
    with pytest.raises(PaymentDeclined):
        await res.get_async(timeout=5)
    assert isinstance(await res.get_async(propagate=False), PaymentDeclined)
    await res.forget_async()
    assert await res.state_async() == states.PENDING
    with pytest.raises(ResultTimeoutError):
        await res.get_async(timeout=0.05)
    await app.aclose()
