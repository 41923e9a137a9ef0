"""Every execution pool, run for real: threads, forked processes, signals, no mocks.

Pools do not touch the broker, so these tests are not parametrised over transports; they
are parametrised over the pools instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from celeriac.app import Celeriac
from celeriac.exceptions import (
    ConfigurationError,
    EncodeError,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    WorkerLostError,
)
from celeriac.worker.pools import Job, Outcome, Pool, get_pool_cls
from celeriac.worker.tracer import ExceptionStandIn

POOLS = ["solo", "threads", "prefork", "asyncio"]

app = Celeriac("pools", broker="memory://", backend="memory://")

#: Set at the end of every test so abandoned threads stop looping.
STOP = threading.Event()


@app.task(name="t.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="t.aadd")
async def aadd(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@app.task(name="t.whoami", bind=True)
def whoami(self: Any, *args: Any) -> dict[str, Any]:
    req = self.request
    return {"id": req.id, "args": list(req.args), "eager": req.is_eager, "pid": os.getpid(),
            "hostname": req.hostname}


@app.task(name="t.awhoami", bind=True)
async def awhoami(self: Any, tag: str) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    req = self.request
    return {"id": req.id, "tag": tag, "args": list(req.args)}


@app.task(name="t.boom")
def boom() -> None:
    raise ValueError("boom went the task")


@app.task(name="t.retry_later", bind=True, max_retries=3)
def retry_later(self: Any) -> None:
    raise self.retry(countdown=7)


@app.task(name="t.sleep")
def sleep_sync(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not STOP.is_set():
        time.sleep(0.005)
    return "slept"


@app.task(name="t.asleep")
async def sleep_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@app.task(name="t.soft")
def soft_sync() -> str:
    try:
        sleep_sync(5)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "never interrupted"


@app.task(name="t.asoft")
async def soft_async() -> str:
    try:
        await asyncio.sleep(5)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "never interrupted"


@app.task(name="t.touch")
def touch(path: str) -> None:
    with open(path, "a") as f:
        f.write("ran\n")


@app.task(name="t.pid")
def pid() -> int:
    return os.getpid()


@app.task(name="t.unpicklable_return")
def unpicklable_return() -> Any:
    return lambda: None


class LockedError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@app.task(name="t.unpicklable_exc")
def unpicklable_exc() -> None:
    raise LockedError("holds a lock")


class Recorder:
    """Collects callbacks and checks they come on the loop thread, start before done."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.started: dict[str, int] = {}
        self.done: dict[str, Outcome] = {}
        self.order: list[str] = []
        self._changed = asyncio.Event()

    def on_start(self, job: Job, pid: int) -> None:
        assert threading.get_ident() == self.thread
        self.started[job.id] = pid
        self._changed.set()

    def on_done(self, job: Job, outcome: Outcome) -> None:
        assert threading.get_ident() == self.thread
        assert job.id not in self.done, f"{job.id} reported twice"
        self.done[job.id] = outcome
        self.order.append(job.id)
        self._changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def outcome(self, job_id: str) -> Outcome:
        await self.until(lambda: job_id in self.done)
        return self.done[job_id]


Scenario = Callable[[Pool, Recorder], Awaitable[None]]


def run(pool_name: str, scenario: Scenario, limit: int = 2, **options: Any) -> None:
    async def main() -> None:
        pool = get_pool_cls(pool_name)(app, limit, hostname="node@test", **options)
        await pool.start()
        rec = Recorder()
        try:
            await scenario(pool, rec)
        finally:
            STOP.set()
            await pool.terminate()
            STOP.clear()

    asyncio.run(main())


def submit(pool: Pool, rec: Recorder, job_id: str, name: str, *args: Any, **fields: Any) -> Job:
    job = Job(job_id, name, list(args), {}, {"hostname": "node@test"}, **fields)
    pool.submit(job, rec.on_start, rec.on_done)
    return job


@pytest.mark.parametrize("pool_name", POOLS)
def test_runs_sync_and_async_tasks_with_their_request(pool_name: str) -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        # Given a started pool, when sync and async tasks are submitted
        submit(pool, rec, "a", "t.add", 2, 3)
        submit(pool, rec, "b", "t.aadd", 4, 5)
        submit(pool, rec, "c", "t.whoami", 1)
        submit(pool, rec, "d", "t.awhoami", "x")
        submit(pool, rec, "e", "t.awhoami", "y")
        await rec.until(lambda: len(rec.done) == 5)
        # Then each succeeded with its own request context, in a pid the pool owns
        assert (rec.done["a"].state, rec.done["a"].retval) == ("SUCCESS", 5)
        assert (rec.done["b"].state, rec.done["b"].retval) == ("SUCCESS", 9)
        me = rec.done["c"].retval
        assert me == {"id": "c", "args": [1], "eager": False, "pid": me["pid"],
                      "hostname": "node@test"}
        assert rec.done["d"].retval == {"id": "d", "tag": "x", "args": ["x"]}
        assert rec.done["e"].retval == {"id": "e", "tag": "y", "args": ["y"]}
        for job_id, outcome in rec.done.items():
            assert rec.started[job_id] == outcome.pid
            assert outcome.runtime >= 0
        assert me["pid"] in (set(pool.pids) if pool_name == "prefork" else {os.getpid()})

    run(pool_name, scenario)


@pytest.mark.parametrize("pool_name", POOLS)
def test_failure_retry_and_unknown_task(pool_name: str) -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        submit(pool, rec, "f", "t.boom")
        submit(pool, rec, "r", "t.retry_later")
        submit(pool, rec, "u", "t.not_registered")
        failed, retried, unknown = [await rec.outcome(i) for i in "fru"]
        assert failed.state == "FAILURE"
        assert isinstance(failed.exc, ValueError) and str(failed.exc) == "boom went the task"
        assert failed.traceback is not None
        assert "in boom" in failed.traceback
        assert "ValueError: boom went the task" in failed.traceback
        assert retried.state == "RETRY" and isinstance(retried.exc, Retry)
        assert retried.exc.when == 7
        assert unknown.state == "FAILURE" and "t.not_registered" in str(unknown.exc)

    run(pool_name, scenario)


@pytest.mark.parametrize("pool_name", POOLS)
@pytest.mark.parametrize("task_name", ["t.soft", "t.asoft"])
def test_soft_time_limit_is_caught_inside_the_task(pool_name: str, task_name: str) -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        # Given a task that catches SoftTimeLimitExceeded, with a soft limit of 0.2 s
        submit(pool, rec, "s", task_name, soft_time_limit=0.2)
        outcome = await rec.outcome("s")
        # Then the task saw the exception and finished on its own terms
        assert (outcome.state, outcome.retval) == ("SUCCESS", "cleaned up")
        assert outcome.runtime < 4

    run(pool_name, scenario)


@pytest.mark.parametrize("pool_name", POOLS)
@pytest.mark.parametrize("task_name", ["t.sleep", "t.asleep"])
def test_hard_time_limit_fails_the_job_and_the_pool_goes_on(pool_name: str, task_name: str) -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        submit(pool, rec, "h", task_name, 5, time_limit=0.3)
        outcome = await rec.outcome("h")
        assert outcome.state == "FAILURE"
        assert isinstance(outcome.exc, TimeLimitExceeded)
        assert not outcome.worker_lost
        # The next jobs run, with as many slots as before
        for i in range(pool.limit):
            submit(pool, rec, f"n{i}", "t.asleep", 0.05)
        await rec.until(lambda: all(f"n{i}" in rec.done for i in range(pool.limit)))
        assert all(rec.done[f"n{i}"].state == "SUCCESS" for i in range(pool.limit))
        if pool_name == "prefork" and task_name == "t.sleep":
            assert rec.started["h"] not in pool.pids  # killed and replaced
            assert len(pool.pids) == pool.limit

    run(pool_name, scenario)


def test_prefork_child_killed_mid_task_is_worker_lost_and_replaced() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        before = set(pool.pids)
        submit(pool, rec, "k", "t.sleep", 5)
        await rec.until(lambda: "k" in rec.started)
        victim = rec.started["k"]
        os.kill(victim, signal.SIGKILL)
        outcome = await rec.outcome("k")
        assert outcome.state == "FAILURE" and outcome.worker_lost
        assert isinstance(outcome.exc, WorkerLostError)
        assert "signal 9 (SIGKILL)" in str(outcome.exc)
        assert outcome.pid == victim
        assert victim not in pool.pids and len(pool.pids) == 2 and set(pool.pids) != before
        submit(pool, rec, "after", "t.add", 1, 1)
        assert (await rec.outcome("after")).retval == 2

    run("prefork", scenario)


def test_prefork_jobs_queued_behind_a_killed_childs_job_still_run_once() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        # Given one child running a job with another job already handed to it
        submit(pool, rec, "victim", "t.sleep", 5)
        submit(pool, rec, "behind", "t.pid")
        await rec.until(lambda: "victim" in rec.started)
        assert pool.num_pending == 1 and "behind" not in rec.started
        # When the child dies mid-job
        os.kill(rec.started["victim"], signal.SIGKILL)
        # Then only the running job is lost; the one behind it never started and runs
        # on the replacement child, once
        assert (await rec.outcome("victim")).worker_lost
        behind = await rec.outcome("behind")
        assert behind.state == "SUCCESS" and behind.retval != rec.started["victim"]
        assert behind.retval == rec.started["behind"]

    run("prefork", scenario, limit=1)


def test_prefork_recalled_job_is_never_run_by_the_child_holding_it(tmp_path: Any) -> None:
    marker = tmp_path / "ran"

    async def scenario(pool: Pool, rec: Recorder) -> None:
        # Given a child running a job with another already handed to it
        submit(pool, rec, "busy", "t.sleep", 0.3)
        await rec.until(lambda: "busy" in rec.started)
        held = submit(pool, rec, "held", "t.touch", str(marker))
        await asyncio.sleep(0.02)
        # When the pool takes back what has not started (a warm shutdown does)
        assert pool.take_pending() == [held]
        # Then the child finishes its job but never runs the recalled one
        await rec.outcome("busy")
        await asyncio.sleep(0.3)
        assert not marker.exists() and "held" not in rec.done
        # And it keeps serving new jobs
        submit(pool, rec, "later", "t.touch", str(marker))
        await rec.outcome("later")
        assert marker.read_text() == "ran\n"

    run("prefork", scenario, limit=1)


def test_prefork_time_limited_job_never_has_a_job_queued_behind_it() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        submit(pool, rec, "limited", "t.sleep", 5, time_limit=0.3)
        submit(pool, rec, "next", "t.add", 1, 2)
        await rec.until(lambda: "limited" in rec.started)
        # The job behind waits in the pool, not in the child the limit will kill
        assert pool.num_pending == 1
        assert isinstance((await rec.outcome("limited")).exc, TimeLimitExceeded)
        assert (await rec.outcome("next")).retval == 3

    run("prefork", scenario, limit=1)


def test_prefork_children_ignore_sigterm_and_sigint() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        submit(pool, rec, "t", "t.sleep", 0.2)
        await rec.until(lambda: "t" in rec.started)
        os.kill(rec.started["t"], signal.SIGTERM)
        os.kill(rec.started["t"], signal.SIGINT)
        outcome = await rec.outcome("t")
        assert (outcome.state, outcome.retval) == ("SUCCESS", "slept"), outcome.exc

    run("prefork", scenario, limit=1)


def test_prefork_max_tasks_per_child_replaces_the_child() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        first_pids = list(pool.pids)
        seen = []
        for i in range(4):
            submit(pool, rec, f"p{i}", "t.pid")
            seen.append((await rec.outcome(f"p{i}")).retval)
        assert seen[0] == seen[1] == first_pids[0]
        assert seen[2] == seen[3] != seen[0]
        assert pool.pids == [seen[2]] or pool.pids != first_pids

    run("prefork", scenario, limit=1, max_tasks_per_child=2)


def test_prefork_unpicklable_values_fail_clearly_and_keep_the_pipe() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        submit(pool, rec, "ret", "t.unpicklable_return")
        submit(pool, rec, "exc", "t.unpicklable_exc")
        ret, exc = await rec.outcome("ret"), await rec.outcome("exc")
        assert ret.state == "FAILURE" and isinstance(ret.exc, EncodeError)
        assert "cannot be sent" in str(ret.exc) and "function" in str(ret.exc)
        assert exc.state == "FAILURE" and isinstance(exc.exc, ExceptionStandIn)
        assert exc.exc.exc_type == "LockedError" and "holds a lock" in str(exc.exc)
        assert exc.traceback is not None and "LockedError: holds a lock" in exc.traceback
        submit(pool, rec, "ok", "t.add", 2, 2)
        assert (await rec.outcome("ok")).retval == 4

    run("prefork", scenario)


@pytest.mark.parametrize("pool_name", POOLS)
def test_take_pending_returns_unstarted_jobs_in_order(pool_name: str) -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        submit(pool, rec, "busy", "t.asleep", 0.2)
        await rec.until(lambda: "busy" in rec.started)
        queued = [submit(pool, rec, f"q{i}", "t.add", i, i) for i in range(3)]
        # (a prefork child already holds the first one, queued behind its running job)
        await asyncio.sleep(0.02)
        assert pool.num_pending == 3
        assert pool.take_pending() == queued
        assert pool.take_pending() == [] and pool.num_pending == 0
        await rec.outcome("busy")
        await asyncio.sleep(0.05)
        assert set(rec.done) == {"busy"} and set(rec.started) == {"busy"}

    run(pool_name, scenario, limit=1)


@pytest.mark.parametrize("pool_name", POOLS)
@pytest.mark.parametrize("task_name", ["t.sleep", "t.asleep"])
def test_stop_waits_for_running_jobs(pool_name: str, task_name: str) -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        submit(pool, rec, "w", task_name, 0.2)
        await rec.until(lambda: "w" in rec.started)
        await pool.stop()
        assert rec.done["w"].state == "SUCCESS"
        assert pool.num_active == 0
        with pytest.raises(RuntimeError, match="stopping"):
            submit(pool, rec, "late", "t.add", 1, 2)

    run(pool_name, scenario)


@pytest.mark.parametrize("pool_name", ["prefork", "asyncio"])
def test_terminate_reports_running_jobs_as_lost(pool_name: str) -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        submit(pool, rec, "x", "t.asleep", 5)
        await rec.until(lambda: "x" in rec.started)
        await pool.terminate()
        outcome = rec.done["x"]
        assert outcome.state == "FAILURE" and outcome.worker_lost
        assert isinstance(outcome.exc, WorkerLostError)
        if pool_name == "prefork":
            assert pool.pids == []

    run(pool_name, scenario)


def test_threads_run_concurrently_up_to_the_limit() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        for i in range(6):
            submit(pool, rec, f"c{i}", "t.sleep", 0.1)
        assert pool.num_active == 3 and pool.num_pending == 3
        await rec.until(lambda: len(rec.done) == 6)
        assert all(o.state == "SUCCESS" for o in rec.done.values())

    run("threads", scenario, limit=3)


def test_unknown_pool_name_lists_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"did you mean 'threads'.*asyncio, prefork"):
        get_pool_cls("thread")
    assert get_pool_cls("processes") is get_pool_cls("prefork")


def test_prefork_recalled_jobs_do_not_use_up_a_childs_task_budget() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        # Given a one-child pool that may run two jobs per child: one running, one
        # handed to it ahead of time
        submit(pool, rec, "first", "t.sleep", 0.3)
        await rec.until(lambda: "first" in rec.started)
        held = submit(pool, rec, "held", "t.pid")
        await asyncio.sleep(0.02)
        # When the job handed ahead is taken back (a revoke or a warm shutdown does)
        assert pool.take_pending() == [held]
        await rec.outcome("first")
        # Then the child still has room for a second job, and is replaced after it
        submit(pool, rec, "second", "t.pid")
        assert (await rec.outcome("second")).retval == rec.started["first"]
        submit(pool, rec, "third", "t.pid")
        assert (await rec.outcome("third")).retval != rec.started["first"]

    run("prefork", scenario, limit=1, max_tasks_per_child=2)


def test_prefork_jobs_queued_behind_a_long_job_move_to_a_free_child() -> None:
    async def scenario(pool: Pool, rec: Recorder) -> None:
        # Given short jobs, which teach the pool to hand each child several at once
        for i in range(300):
            submit(pool, rec, f"warm{i}", "t.add", i, i)
        await rec.until(lambda: len(rec.done) == 300)
        # When a long job is followed by short ones, some of them handed to its child
        submit(pool, rec, "long", "t.sleep", 3)
        quick = [f"quick{i}" for i in range(10)]
        for job_id in quick:
            submit(pool, rec, job_id, "t.pid")
        await rec.until(lambda: "long" in rec.started)
        # Then none waits for the long job: all finish on the other child meanwhile
        await rec.until(lambda: all(q in rec.done for q in quick), timeout=2.0)
        assert "long" not in rec.done
        assert {rec.done[q].retval for q in quick} == set(pool.pids) - {rec.started["long"]}

    run("prefork", scenario, limit=2)
