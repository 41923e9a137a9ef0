"""Delivery across processes: nothing lost, nothing run twice, and a killed worker's task
comes back.

The worker is a ``celeriac worker`` subprocess; its tasks write to a ledger (one file per
process, one ``os.write`` per event) that the test reads afterwards, so what was executed
is counted outside the worker and survives SIGKILL.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

from celeriac import states

from .support import E2E, report, wait_for

#: Tasks in the no-loss run.
N_TASKS = 10_000


def test_ten_thousand_tasks_none_lost_none_run_twice(e2e: E2E) -> None:
    # Given a prefork worker with two children consuming from the SQLite broker
    worker = e2e.worker(pool="prefork", concurrency=2)
    # When another process (this one) sends 10,000 tasks, one call at a time, while the
    # worker consumes
    started = time.monotonic()
    sent = [e2e.client.send_task("e2e.mark").id for _ in range(N_TASKS)]
    sent_in = time.monotonic() - started

    def executed() -> bool:
        assert worker.alive(), worker.tail()
        return len(e2e.ledger.of("done")) >= N_TASKS

    wait_for(executed, 90, f"{N_TASKS} executions in the ledger", interval=0.2)
    total = time.monotonic() - started
    # And the worker is stopped warm once everything ran
    worker.send(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.tail()
    # Then every task sent ran exactly once, and nothing is left in the queue
    done = e2e.ledger.of("done")
    counts = Counter(e.task_id for e in done)
    twice = [task_id for task_id, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} task(s) ran more than once, e.g. {twice[:3]}"
    missing = set(sent) - set(counts)
    assert not missing, f"{len(missing)} task(s) never ran, e.g. {sorted(missing)[:3]}"
    assert set(counts) == set(sent)
    assert e2e.queue_length() == 0
    assert len({e.pid for e in done}) == 2, "both prefork children should have run tasks"
    span = done[-1].at - done[0].at
    report(
        "10k no-loss run", sent_per_s=round(N_TASKS / sent_in),
        executed_per_s=round(N_TASKS / max(span, 1e-9)), end_to_end_s=round(total, 2),
    )


def test_sigkilled_worker_acks_late_task_runs_again_and_completes(e2e: E2E) -> None:
    # Given a worker whose broker leases last 2 s, running an acks_late task that sleeps 5 s
    env = {"E2E_VISIBILITY_TIMEOUT": "2"}
    first = e2e.worker(pool="prefork", concurrency=1, env=env)
    res = e2e.client.send_task("e2e.sleepy_late", (5.0,))
    wait_for(lambda: e2e.ledger.of("started", res.id), 20, "the task to start")
    first_start = e2e.ledger.of("started", res.id)[0]
    # And the task outlives its first lease while the worker is alive: the live holder
    # extends the lease, so the message is neither returned to the queue nor run twice
    wait_for(lambda: time.time() >= first_start.at + 3.0, 10, "3 s of running")
    assert e2e.queue_length() == 0
    assert len(e2e.ledger.of("started", res.id)) == 1
    # When the worker's whole process group is killed mid-task
    first.kill_group(signal.SIGKILL)
    killed_at = time.time()
    assert first.wait(10) == -signal.SIGKILL
    assert not e2e.ledger.of("finished", res.id), "the task finished before the kill"
    # And a new worker starts
    e2e.worker(pool="prefork", concurrency=1, env=env)
    ready_after = time.time() - killed_at
    # Then the task is delivered again once the lease passes, runs again and completes
    assert res.get(timeout=40) == 5.0
    assert res.state == states.SUCCESS
    starts = e2e.ledger.of("started", res.id)
    assert len(starts) == 2, starts
    assert starts[0].pid != starts[1].pid
    assert len(e2e.ledger.of("finished", res.id)) == 1
    assert e2e.queue_length() == 0
    report("redelivery after SIGKILL", visibility_timeout_s=2,
           new_worker_ready_after_s=round(ready_after, 2),
           kill_to_second_start_s=round(starts[1].at - killed_at, 2))
