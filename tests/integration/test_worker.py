"""The path of one task, end to end through a real worker, on every embedded transport.

Each test builds an app on the transport under test, starts a real WorkController on a
thread (celeriac.testing.start_worker) and observes what a user would: results, states,
exceptions, the quarantine queue, timing of countdowns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac.exceptions import (
    ConfigurationError,
    ConnectionBrokenError,
    ContentDisallowed,
    DecodeError,
    NotRegistered,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from celeriac.messaging.message import Message
from celeriac.messaging.transports.base import QUARANTINE_QUEUE
from celeriac.protocol import parse_iso8601
from celeriac.testing import start_worker
from celeriac.utils import portal
from celeriac.worker.bootsteps import StartStopStep, Step

from .conftest import queue_length

TRANSPORTS = ["memory", "sqlite"]


@pytest.fixture(params=TRANSPORTS)
def app(request: pytest.FixtureRequest, tmp_path: Any) -> Celeriac:
    if request.param == "memory":
        url = f"memory://{uuid.uuid4().hex}"
        backend = f"memory://{uuid.uuid4().hex}"
    else:
        url = backend = f"sqlite:///{tmp_path / 'celeriac.db'}"
    app = Celeriac(
        "t",
        broker=url,
        backend=backend,
        broker_transport_options={"visibility_timeout": 5},
        set_as_current=False,
    )
    define_tasks(app)
    yield app
    app.close()


CALLS: dict[str, list[Any]] = {}


def define_tasks(app: Celeriac) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.aadd")
    async def aadd(x: int, y: int) -> int:
        await asyncio.sleep(0.01)
        return x + y

    @app.task(name="t.fail")
    def fail(message: str) -> None:
        raise ValueError(message, 7)

    @app.task(name="t.flaky", bind=True, max_retries=5, default_retry_delay=0.05)
    def flaky(self: Any, key: str, succeed_on: int) -> int:
        CALLS.setdefault(key, []).append(self.request.retries)
        if self.request.retries < succeed_on:
            raise self.retry()
        return self.request.retries

    @app.task(
        name="t.auto",
        bind=True,
        autoretry_for=(KeyError,),
        max_retries=2,
        retry_kwargs={"countdown": 0.01},
    )
    def auto(self: Any, key: str) -> None:
        CALLS.setdefault(key, []).append(self.request.retries)
        raise KeyError(key)

    @app.task(name="t.context", bind=True)
    def context(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        r = self.request
        return {
            "id": r.id,
            "retries": r.retries,
            "hostname": r.hostname,
            "args": list(r.args),
            "kwargs": dict(r.kwargs),
            "root_id": r.root_id,
            "parent_id": r.parent_id,
            "routing_key": r.delivery_info.get("routing_key"),
        }

    @app.task(name="t.request", bind=True)
    def request_fields(self: Any) -> dict[str, Any]:
        r = self.request
        return {
            "eta": r.eta,
            "expires": r.expires,
            "delivery_info": dict(r.delivery_info),
            "trace": (r.headers or {}).get("x-trace"),
        }

    @app.task(name="t.ignored", ignore_result=True)
    def ignored(marker: str) -> str:
        open(marker, "w").close()
        return "not stored"

    @app.task(name="t.parent", bind=True)
    def parent(self: Any) -> str:
        return app.tasks["t.context"].delay().id

    @app.task(name="t.now")
    def now() -> float:
        return time.time()

    @app.task(name="t.soft", soft_time_limit=0.3)
    def soft() -> str:
        try:
            time.sleep(5)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

    @app.task(name="t.hard", time_limit=0.5)
    def hard() -> str:
        time.sleep(10)
        return "not killed"

    @app.task(name="t.limited", rate_limit="10/s")
    def limited() -> float:
        return time.time()

    @app.task(name="t.die_once", acks_late=True, reject_on_worker_lost=True)
    def die_once(marker: str) -> str:
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived"

    @app.task(name="t.die")
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @app.task(name="t.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds


# -- the basic path, on every pool ---------------------------------------------------------


@pytest.mark.parametrize("pool", ["solo", "threads", "asyncio", "prefork"])
def test_sync_and_async_tasks_run_on_every_pool(app: Celeriac, pool: str) -> None:
    # Given a worker with this pool
    with start_worker(app, pool=pool, concurrency=2):
        # When sync and async def tasks are sent
        sync = [app.tasks["t.add"].delay(i, i) for i in range(10)]
        asyn = [app.tasks["t.aadd"].delay(i, 1) for i in range(10)]
        # Then every result comes back
        assert [r.get(timeout=20) for r in sync] == [i + i for i in range(10)]
        assert [r.get(timeout=20) for r in asyn] == [i + 1 for i in range(10)]
        assert sync[0].state == states.SUCCESS and sync[0].successful()


def test_failure_reraises_with_type_and_message(app: Celeriac) -> None:
    with start_worker(app):
        res = app.tasks["t.fail"].delay("bad value")
        with pytest.raises(ValueError) as info:
            res.get(timeout=10)
        assert info.value.args == ("bad value", 7)
        assert res.state == states.FAILURE and res.failed()
        assert "ValueError" in res.traceback
        assert isinstance(res.get(timeout=1, propagate=False), ValueError)


def test_retry_runs_again_with_retries_counted(app: Celeriac) -> None:
    key = uuid.uuid4().hex
    with start_worker(app):
        assert app.tasks["t.flaky"].delay(key, 3).get(timeout=20) == 3
    assert CALLS[key] == [0, 1, 2, 3]


def test_autoretry_gives_up_with_the_original_exception(app: Celeriac) -> None:
    key = uuid.uuid4().hex
    with start_worker(app):
        res = app.tasks["t.auto"].delay(key)
        with pytest.raises(KeyError):
            res.get(timeout=20)
    assert CALLS[key] == [0, 1, 2]


def test_request_context_and_parent_linking(app: Celeriac) -> None:
    with start_worker(app) as worker:
        res = app.tasks["t.context"].apply_async((1, 2), {"k": "v"})
        ctx = res.get(timeout=10)
        assert ctx["id"] == res.id and ctx["root_id"] == res.id and ctx["parent_id"] is None
        assert ctx["args"] == [1, 2] and ctx["kwargs"] == {"k": "v"}
        assert ctx["hostname"] == worker.hostname and ctx["routing_key"] == "celery"
        # A task sent from inside a task has the sender as parent and the same root.
        parent = app.tasks["t.parent"].delay()
        child_id = parent.get(timeout=10)
        child = app.AsyncResult(child_id).get(timeout=10)
        assert child["parent_id"] == parent.id and child["root_id"] == parent.id


def test_apply_async_options_reach_the_request(app: Celeriac) -> None:
    # Given a worker, when a task is sent with an eta, expiry, headers, priority and key
    eta = datetime.now(UTC) + timedelta(seconds=0.5)
    with start_worker(app):
        res = app.tasks["t.request"].apply_async(
            eta=eta,
            expires=60,
            headers={"x-trace": "abc"},
            priority=5,
            queue="celery",
            routing_key="celery",
        )
        fields = res.get(timeout=10)
    # Then the task sees them in self.request
    assert parse_iso8601(fields["eta"]) == eta
    expires = parse_iso8601(fields["expires"])
    assert expires is not None and expires > eta
    assert fields["trace"] == "abc"
    assert fields["delivery_info"]["priority"] == 5
    assert fields["delivery_info"]["routing_key"] == "celery"


def test_ignore_result_runs_the_task_and_stores_nothing(app: Celeriac, tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    with start_worker(app):
        res = app.tasks["t.ignored"].delay(str(marker))
        deadline = time.time() + 10
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists()
    assert res.state == states.PENDING


def test_a_task_declared_ignore_result_stores_nothing_even_when_the_message_asks(
    app: Celeriac, tmp_path: Any
) -> None:
    # Given a task the worker declares ignore_result, sent by a client that does not
    # know it (send_task by name: the message says "store the result")
    marker = tmp_path / "ran"
    with start_worker(app):
        res = app.send_task("t.ignored", (str(marker),), ignore_result=False)
        # Then it runs, and, as on Celery's worker, its result is not stored
        deadline = time.time() + 10
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists()
        stored = app.send_task("t.add", (1, 2), ignore_result=False)
        assert stored.get(timeout=10) == 3  # queued after: the first one is done too
    assert res.state == states.PENDING


def test_countdown_is_not_run_early(app: Celeriac) -> None:
    with start_worker(app):
        sent = time.time()
        res = app.tasks["t.now"].apply_async(countdown=1.0)
        ran = res.get(timeout=10)
        assert ran - sent >= 0.95


def test_expired_task_is_revoked_not_run(app: Celeriac) -> None:
    res = app.tasks["t.add"].apply_async((1, 1), expires=0.05)
    time.sleep(0.2)
    with start_worker(app):
        with pytest.raises(TaskRevokedError):
            res.get(timeout=10)
        assert res.state == states.REVOKED


def test_revoked_id_is_dropped(app: Celeriac) -> None:
    with start_worker(app) as worker:
        worker.state.revoked.add("revoked-id")
        res = app.tasks["t.add"].apply_async((1, 1), task_id="revoked-id")
        with pytest.raises(TaskRevokedError):
            res.get(timeout=10)


def test_unknown_task_fails_and_is_quarantined(app: Celeriac) -> None:
    with start_worker(app):
        res = app.send_task("t.nope", (1,))
        with pytest.raises(NotRegistered):
            res.get(timeout=10)
    assert queue_length(app, QUARANTINE_QUEUE) == 1


def test_disallowed_content_is_quarantined_not_run(app: Celeriac) -> None:
    # Given a worker that accepts only JSON, when a pickled message arrives
    with start_worker(app):
        res = app.tasks["t.add"].apply_async((1, 2), serializer="pickle")
        # Then it is not executed: its result says the content was refused
        with pytest.raises(ContentDisallowed):
            res.get(timeout=10)
    # And it is quarantined with its bytes
    assert queue_length(app, QUARANTINE_QUEUE) == 1


def test_undecodable_body_is_quarantined_and_its_result_records_why(app: Celeriac) -> None:
    # Given a worker, when a message for a known task arrives whose JSON body is garbage
    async def publish_garbage() -> None:
        producer = await app.get_producer()
        message = Message(b"\xff\x00not json", {"task": "t.add", "id": "garbled"}, {})
        await producer.publish(message, "", "celery", declare=(app.router.queue("celery"),))

    with start_worker(app):
        portal.run(publish_garbage())
        # Then the client sees why instead of waiting on PENDING for ever
        with pytest.raises(DecodeError, match="cannot decode"):
            app.AsyncResult("garbled").get(timeout=10)
        # And good tasks keep running
        assert app.tasks["t.add"].delay(1, 2).get(timeout=10) == 3
    # And the original bytes are kept in the quarantine queue, not dropped
    assert queue_length(app, QUARANTINE_QUEUE) == 1
    assert queue_length(app, "celery") == 0


def test_soft_time_limit_raises_inside_the_task(app: Celeriac) -> None:
    with start_worker(app, pool="prefork", concurrency=1):
        assert app.tasks["t.soft"].delay().get(timeout=10) == "cleaned up"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_hard_time_limit_fails_the_task(app: Celeriac, pool: str) -> None:
    with start_worker(app, pool=pool, concurrency=1):
        res = app.tasks["t.hard"].delay()
        with pytest.raises(TimeLimitExceeded):
            res.get(timeout=10)
        # the pool keeps working afterwards
        assert app.tasks["t.add"].delay(2, 2).get(timeout=10) == 4


def test_rate_limit_spaces_executions(app: Celeriac) -> None:
    with start_worker(app, concurrency=4):
        results = [app.tasks["t.limited"].delay() for _ in range(5)]
        times = sorted(r.get(timeout=20) for r in results)
    # 10/s with a bucket of one: five executions span at least ~0.4 s
    assert times[-1] - times[0] >= 0.35


def test_link_and_link_error_callbacks(app: Celeriac) -> None:
    add = app.tasks["t.add"]
    with start_worker(app):
        callback_id = str(uuid.uuid4())
        add.apply_async((2, 3), link=add.s(10).set(task_id=callback_id)).get(timeout=10)
        assert app.AsyncResult(callback_id).get(timeout=10) == 15
        errback_id = str(uuid.uuid4())
        failing = app.tasks["t.fail"].apply_async(
            ("x",), link_error=app.tasks["t.context"].s().set(task_id=errback_id)
        )
        with pytest.raises(ValueError):
            failing.get(timeout=10)
        assert app.AsyncResult(errback_id).get(timeout=10)["args"] == [failing.id]


def test_warm_shutdown_returns_unstarted_messages_at_once(app: Celeriac) -> None:
    # Given a single-slot worker busy with a long task and more waiting in its prefetch
    with start_worker(app, concurrency=1) as worker:
        running = app.tasks["t.sleep"].delay(1.0)
        [app.tasks["t.sleep"].delay(0.5) for _ in range(3)]
        deadline = time.time() + 10
        while not worker.state.active and time.time() < deadline:
            time.sleep(0.02)
    # When it stops warm, the running one finished and the others are back in the queue
    assert running.get(timeout=5) == 1.0
    assert queue_length(app, "celery") == 3


def test_cold_shutdown_requeues_running_acks_late_tasks(app: Celeriac) -> None:
    # Given an acks_late task running in a prefork child
    sleep = app.tasks["t.sleep"]
    with start_worker(app, pool="prefork", concurrency=1, shutdown="cold") as worker:
        app.conf.task_acks_late = True
        res = sleep.delay(30)
        deadline = time.time() + 10
        while not worker.state.active and time.time() < deadline:
            time.sleep(0.02)
        assert worker.state.active
    # When the worker stops cold, the execution is killed and its message is back at once
    assert queue_length(app, "celery") == 1
    assert res.state == states.PENDING


def test_unreachable_broker_ends_the_worker_with_a_clear_error(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}"
    app = Celeriac("t", broker=url, backend="memory://", set_as_current=False)
    app.conf.broker_connection_max_retries = 1
    worker = app.Worker(pool="solo", install_signal_handlers=False)
    assert worker.start() == 1


def test_lost_worker_process_requeues_or_fails(app: Celeriac, tmp_path: Any) -> None:
    with start_worker(app, pool="prefork", concurrency=1):
        # reject_on_worker_lost: the killed execution's message is requeued and runs again
        marker = str(tmp_path / "died-once")
        assert app.tasks["t.die_once"].delay(marker).get(timeout=20) == "survived"
        # default: the loss is recorded as a failure, not dropped
        with pytest.raises(WorkerLostError):
            app.tasks["t.die"].delay().get(timeout=20)


def test_user_bootsteps_start_and_stop(app: Celeriac) -> None:
    events: list[str] = []

    class Recorder(StartStopStep):
        requires = ("celeriac.worker.components:Pool",)

        def create(self, worker: Any) -> Any:
            class Obj:
                def start(self) -> None:
                    events.append("start")

                def stop(self) -> None:
                    events.append("stop")

            return Obj()

    app.steps["worker"].add(Recorder)
    with start_worker(app):
        assert app.tasks["t.add"].delay(1, 1).get(timeout=10) == 2
    assert events == ["start", "stop"]


def test_cyclic_bootsteps_are_a_clear_error(app: Celeriac) -> None:
    class A(Step):
        requires = ("tests.integration.test_worker:_B",)

    global _B

    class _B(Step):  # type: ignore[no-redef]
        requires = (A,)

    app.steps["worker"].add(A)
    with pytest.raises(ConfigurationError) as info, start_worker(app):
        pass
    assert "cycl" in str(info.value).lower()


def _inject_fetch_failures(app: Celeriac, count: int) -> tuple[Any, Any, dict[str, int], Any]:
    from celeriac.messaging.transports import get_transport_cls

    cls = get_transport_cls(app.conf.broker_url)
    original = cls.fetch
    failures = {"left": count}

    async def failing_fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if failures["left"] and getattr(self, "_test_worker", False):
            failures["left"] -= 1
            raise ConnectionBrokenError("injected: broker went away")
        return await original(self, *args, **kwargs)

    return cls, original, failures, failing_fetch


@pytest.mark.parametrize("max_retries", [100, 0])
def test_connection_loss_is_survived_and_consuming_resumes(app: Celeriac, max_retries: int) -> None:
    # Given a worker whose connection gives up after `max_retries` reconnect attempts
    app.conf.broker_connection_max_retries = max_retries
    cls, original, failures, failing_fetch = _inject_fetch_failures(app, 1)
    with start_worker(app) as worker:
        assert app.tasks["t.add"].delay(1, 1).get(timeout=10) == 2
        assert worker.consumer is not None and worker.consumer.connection is not None
        worker.consumer.connection.transport._test_worker = True  # type: ignore[attr-defined]
        # When the broker connection breaks once
        cls.fetch = failing_fetch
        try:
            # Then tasks keep running
            assert app.tasks["t.add"].delay(2, 2).get(timeout=20) == 4
        finally:
            cls.fetch = original
        assert failures["left"] == 0
        # reconnecting in place when retries are allowed; otherwise the consumer
        # blueprint is restarted and every step attaches to a new connection
        assert worker.consumer.restarts == (0 if max_retries else 1)


def test_apply_runs_eagerly_with_retries(app: Celeriac) -> None:
    key = uuid.uuid4().hex
    res = app.tasks["t.flaky"].apply((key, 2))
    assert res.get() == 2 and res.successful()
    assert CALLS[key] == [0, 1, 2]
    app.conf.task_always_eager = True
    assert app.tasks["t.add"].delay(3, 4).get() == 7


def _burst_while(worker: Any, busy: Any, timeout: float = 30.0) -> list[int]:
    """Sample the task consumer's burst until ``busy()`` turns false.

    One last sample is taken after, so a drain faster than the first sleep still
    yields a figure to assert on.
    """
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        running = busy()
        tc = worker.consumer.task_consumer
        if tc is not None:
            seen.append(tc.burst)
        if not running:
            return seen
        assert time.monotonic() < deadline, "the tasks did not finish in time"
        time.sleep(0.02)


@pytest.mark.parametrize(("window", "multiplier"), [(0.05, 2), (0.0, 2), (0.05, 1)])
def test_short_tasks_let_the_worker_claim_beyond_its_prefetch_limit(
    app: Celeriac, window: float, multiplier: int
) -> None:
    # Given a one-slot worker allowed two messages at a time, and many quick tasks
    app.conf.worker_prefetch_multiplier = multiplier
    app.conf.worker_prefetch_burst = window
    results = [app.tasks["t.add"].delay(i, i) for i in range(4000)]
    with start_worker(app, pool="solo", concurrency=1) as worker:
        # When it drains them
        seen = _burst_while(worker, lambda: not results[-1].ready())
        assert results[-1].get(timeout=10) == 7998
    # Then, while tasks finish fast, it claims extra messages per broker call; with the
    # burst switched off, or a multiplier of 1 (fair sharing asked for), it never does
    if window and multiplier > 1:
        assert max(seen) > 1
    else:
        assert max(seen) == 0


def test_long_tasks_keep_the_prefetch_limit_as_set(app: Celeriac) -> None:
    # Given one slot, two messages at a time, and tasks that take a while
    app.conf.worker_prefetch_multiplier = 2
    results = [app.tasks["t.sleep"].delay(0.15) for _ in range(6)]
    with start_worker(app, pool="threads", concurrency=1) as worker:
        seen = _burst_while(worker, lambda: not results[-1].ready())
    # Then the worker never holds more than its prefetch limit: others could take them
    assert max(seen) == 0
