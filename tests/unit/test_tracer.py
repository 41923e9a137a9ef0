"""The tracer: what one execution comes to, and the request context around it."""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any

import pytest

from celeriac.app import Celeriac
from celeriac.exceptions import (
    Ignore,
    NotRegistered,
    Reject,
    RemoteTaskError,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)
from celeriac.worker.pools import Job
from celeriac.worker.tracer import (
    AsyncSoftTimeLimitExceeded,
    ExceptionStandIn,
    Execution,
    trace,
    trace_async,
)

app = Celeriac("tracer", broker="memory://", backend="memory://")


@app.task(name="u.request", bind=True)
def request_of(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    r = self.request
    return {"id": r.id, "name": r.name, "args": r.args, "kwargs": r.kwargs, "retries": r.retries,
            "eager": r.is_eager, "direct": r.called_directly}


@app.task(name="u.retry", bind=True)
def retries(self: Any) -> None:
    raise self.retry(countdown=3)


@app.task(name="u.reject")
def rejects() -> None:
    raise Reject("not today", requeue=True)


@app.task(name="u.ignore")
def ignores() -> None:
    raise Ignore()


@app.task(name="u.flaky", autoretry_for=(ValueError,), max_retries=2, retry_kwargs={"countdown": 1})
def flaky() -> None:
    raise ValueError("flaky")


@app.task(name="u.loop")
async def loop_id() -> int:
    await asyncio.sleep(0)
    return id(asyncio.get_running_loop())


@app.task(name="u.interrupt")
def interrupt() -> None:
    raise KeyboardInterrupt


CLEANED: list[str] = []


@app.task(name="u.soft_wait_for")
async def soft_wait_for() -> str:
    async def inner() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            CLEANED.append("inner cancelled")
            raise

    try:
        await asyncio.wait_for(inner(), 10)
    except SoftTimeLimitExceeded as exc:
        return f"caught {type(exc).__name__}"
    return "not interrupted"


@app.task(name="u.asleep")
async def asleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def job(name: str, *args: Any, context: dict[str, Any] | None = None, **kwargs: Any) -> Job:
    return Job("id-1", name, list(args), kwargs, context or {})


def test_success_carries_the_value_and_the_request_context() -> None:
    outcome = trace(app, job("u.request", 1, 2, k="v", context={"retries": 2}))
    assert outcome.state == "SUCCESS"
    assert outcome.retval == {"id": "id-1", "name": "u.request", "args": [1, 2],
                              "kwargs": {"k": "v"}, "retries": 2, "eager": False, "direct": False}
    assert outcome.runtime > 0 and outcome.exc is None
    # the context is gone after the call
    assert request_of.request.id is None


def test_context_may_mark_an_eager_execution() -> None:
    outcome = trace(app, job("u.request", context={"is_eager": True}))
    assert outcome.retval["eager"] is True


def test_retry_reject_ignore() -> None:
    retry = trace(app, job("u.retry"))
    assert retry.state == "RETRY" and isinstance(retry.exc, Retry) and retry.exc.when == 3
    reject = trace(app, job("u.reject"))
    assert (reject.state, reject.requeue) == ("REJECTED", True)
    assert isinstance(reject.exc, Reject)
    assert trace(app, job("u.ignore")).state == "IGNORED"


def test_autoretry_until_retries_are_used_up() -> None:
    first = trace(app, job("u.flaky"))
    assert first.state == "RETRY"
    assert isinstance(first.exc, Retry) and isinstance(first.exc.exc, ValueError)
    last = trace(app, job("u.flaky", context={"retries": 2}))
    assert last.state == "FAILURE"
    assert isinstance(last.exc, ValueError) and str(last.exc) == "flaky"
    assert last.traceback is not None and "ValueError: flaky" in last.traceback


def test_failure_tracebacks_start_in_the_task_not_the_tracer() -> None:
    for outcome, where in (
        (trace(app, job("u.flaky", context={"retries": 5})), "in flaky"),
        (trace(app, job("u.asleep", "not a number")), "in asleep"),
    ):
        assert outcome.state == "FAILURE"
        assert outcome.traceback is not None and where in outcome.traceback
        assert "worker/tracer.py" not in outcome.traceback
        assert "base_events.py" not in outcome.traceback


def test_unknown_task_is_not_registered() -> None:
    outcome = trace(app, job("u.missing"))
    assert outcome.state == "FAILURE" and isinstance(outcome.exc, NotRegistered)
    assert "u.missing" in (outcome.traceback or "")


def test_base_exceptions_propagate_to_the_pool() -> None:
    with pytest.raises(KeyboardInterrupt):
        trace(app, job("u.interrupt"))
    assert request_of.request.id is None


def test_async_tasks_from_sync_code_reuse_one_loop_per_thread() -> None:
    first, second = trace(app, job("u.loop")), trace(app, job("u.loop"))
    assert first.state == second.state == "SUCCESS"
    assert first.retval == second.retval
    other: list[Any] = []
    thread = threading.Thread(target=lambda: other.append(trace(app, job("u.loop")).retval))
    thread.start()
    thread.join()
    assert other and other[0] != first.retval


def test_trace_async_awaits_on_the_running_loop() -> None:
    async def main() -> tuple[Any, int]:
        outcome = await trace_async(app, job("u.loop"))
        return outcome.retval, id(asyncio.get_running_loop())

    retval, running = asyncio.run(main())
    assert retval == running


def test_soft_limit_reaches_the_await_and_asyncio_helpers_clean_up() -> None:
    CLEANED.clear()

    async def main() -> Any:
        ex = Execution()
        asyncio.get_running_loop().call_later(0.05, ex.soft_async, "soft!")
        return await trace_async(app, job("u.soft_wait_for"), ex)

    outcome = asyncio.run(main())
    assert (outcome.state, outcome.retval) == ("SUCCESS", "caught AsyncSoftTimeLimitExceeded")
    assert CLEANED == ["inner cancelled"]
    assert issubclass(AsyncSoftTimeLimitExceeded, SoftTimeLimitExceeded)
    assert issubclass(AsyncSoftTimeLimitExceeded, asyncio.CancelledError)


def test_uncaught_async_soft_limit_reports_the_plain_exception() -> None:
    async def main() -> Any:
        ex = Execution()
        asyncio.get_running_loop().call_later(0.05, ex.soft_async, "soft!")
        return await trace_async(app, job("u.asleep", 5), ex)

    outcome = asyncio.run(main())
    assert outcome.state == "FAILURE"
    assert type(outcome.exc) is SoftTimeLimitExceeded and str(outcome.exc) == "soft!"


def test_hard_cancel_is_a_time_limit_failure() -> None:
    async def main() -> Any:
        ex = Execution()
        asyncio.get_running_loop().call_later(0.05, ex.cancel_hard)
        return await trace_async(app, Job("h", "u.asleep", [5], {}, time_limit=0.05), ex)

    outcome = asyncio.run(main())
    assert outcome.state == "FAILURE" and isinstance(outcome.exc, TimeLimitExceeded)


def test_interrupts_are_refused_outside_the_running_function() -> None:
    ex = Execution()
    assert not ex.inject(SoftTimeLimitExceeded)
    assert trace(app, job("u.request"), ex).state == "SUCCESS"
    assert not ex.inject(SoftTimeLimitExceeded)
    assert not ex.soft_async() and not ex.cancel_hard()


def test_exception_stand_in_survives_pickle_with_the_original_names() -> None:
    class Local(Exception):
        pass

    stand_in = ExceptionStandIn.from_exception(Local("bad", object))
    copy = pickle.loads(pickle.dumps(stand_in))
    assert copy.exc_type.endswith("Local") and copy.exc_module == __name__
    assert copy.exc_message[0] == "bad" and "object" in copy.exc_message[1]
    assert "bad" in str(copy)
    remote = ExceptionStandIn.from_exception(RemoteTaskError("Gone", "elsewhere", ["why"]))
    assert (remote.exc_type, remote.exc_module) == ("Gone", "elsewhere")
    assert remote.exc_message == ["why"]
