"""Shutdown by signal, as a supervisor sends it: the first SIGTERM is warm, the second cold."""

from __future__ import annotations

import signal
import time

import pytest

from celeriac import states
from celeriac.result import AsyncResult

from .support import E2E, Process, report, wait_for


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_sigterm_finishes_the_running_task_and_returns_prefetched_ones(
    e2e: E2E, pool: str
) -> None:
    # Given a one-slot worker running a 2 s task
    worker = e2e.worker(pool=pool, concurrency=1)
    running = e2e.client.send_task("e2e.sleepy", (2.0,))
    wait_for(lambda: e2e.ledger.of("started", running.id), 20, "the long task to start")
    # And three more tasks claimed by the worker (prefetched) but not started
    waiting = [e2e.client.send_task("e2e.sleepy", (0.1,)) for _ in range(3)]
    wait_for(lambda: e2e.queue_length() == 0, 10, "the worker to prefetch three messages")
    # When the worker gets SIGTERM while the task runs
    worker.send(signal.SIGTERM)
    # Then it exits with status 0 once the running task is done
    assert worker.wait(30) == 0, worker.tail()
    assert running.get(timeout=5) == 2.0
    assert running.state == states.SUCCESS
    # And the prefetched messages are back in the queue, none of them started
    assert e2e.queue_length() == 3
    assert [e.task_id for e in e2e.ledger.of("started")] == [running.id]
    assert all(r.state == states.PENDING for r in waiting)


def start_cold_shutdown(e2e: E2E, task: str) -> tuple[Process, AsyncResult, float, int]:
    """Run a one-minute ``task`` on a prefork worker, then SIGTERM it twice.

    Returns the worker, the task's result, how long the exit took after the second signal,
    and the exit code.
    """
    worker = e2e.worker(pool="prefork", concurrency=1)
    res = e2e.client.send_task(task, (60.0,))
    wait_for(lambda: e2e.ledger.of("started", res.id), 20, "the long task to start")
    # The first SIGTERM starts a warm shutdown, which would wait for the task
    worker.send(signal.SIGTERM)
    wait_for(lambda: "warm shutdown" in worker.output(), 10, "the warm shutdown to begin")
    assert worker.alive()
    cold_at = time.monotonic()
    worker.send(signal.SIGTERM)
    code = worker.wait(15)
    return worker, res, time.monotonic() - cold_at, code


def test_second_sigterm_is_a_cold_shutdown_that_exits_promptly(e2e: E2E) -> None:
    # Given a worker in a warm shutdown, waiting for a task that would take a minute
    # When a second SIGTERM arrives
    worker, res, took, code = start_cold_shutdown(e2e, "e2e.sleepy")
    # Then the worker exits promptly, without waiting for the task
    assert took < 10, f"cold shutdown took {took:.1f} s"
    assert not e2e.ledger.of("finished", res.id)
    assert not worker.alive()
    report("cold shutdown", seconds=round(took, 2), exit_code=code)


def test_cold_shutdown_returns_the_interrupted_acks_late_message(e2e: E2E) -> None:
    # Given a worker in a warm shutdown, running an acks_late task that would take a minute
    # When a second SIGTERM makes the shutdown cold
    _, res, _, _ = start_cold_shutdown(e2e, "e2e.sleepy_late")
    # Then the unsettled message is back in its queue for the next worker, not failed
    assert not e2e.ledger.of("finished", res.id)
    assert e2e.queue_length() == 1, f"not requeued; state {res.state}: {res.result!r}"
    assert res.state == states.PENDING
