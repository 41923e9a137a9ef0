"""Delivery on Redis across processes: a SIGKILLed worker's unacked messages come back, and
a task delayed past the visibility timeout runs exactly once.

Workers are ``celeriac worker`` subprocesses on Redis database 14 under a key prefix of
the test's own; their tasks write to the ledger (see ``apps/e2eapp.py``), so what ran is
counted outside the worker and survives SIGKILL.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from typing import Any

import pytest
import redis

from celeriac import states

from .support import E2E, report, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: Visibility timeout (s) of the workers in these tests.
VISIBILITY = 2.0
#: acks_late tasks sent to the worker that is killed.
N_HELD = 12


def _unacked(e2e: E2E) -> int:
    """Entries in kombu's ``unacked`` hash under the test's prefix."""
    client = redis.Redis.from_url(e2e.url)
    try:
        return int(client.hlen(f"{e2e.transport_options['global_keyprefix']}unacked"))
    finally:
        client.close()


def _held_task_ids(e2e: E2E) -> set[str]:
    """Task ids of the messages in kombu's ``unacked`` hash (``[envelope, exchange, rk]``)."""
    client = redis.Redis.from_url(e2e.url)
    try:
        entries = client.hvals(f"{e2e.transport_options['global_keyprefix']}unacked")
    finally:
        client.close()
    return {json.loads(raw)[0]["headers"]["id"] for raw in entries}


def test_sigkilled_worker_holding_unacked_messages_loses_none(redis_e2e: E2E) -> None:
    e2e = redis_e2e
    env = {"E2E_VISIBILITY_TIMEOUT": str(VISIBILITY)}
    # Given a worker with 2 threads that claims up to 4 messages per thread (8 at once)
    first = e2e.worker("--prefetch-multiplier", "4", pool="threads", concurrency=2, env=env)
    # And 12 acks_late tasks of 0.5 s each
    sent = [e2e.client.send_task("e2e.sleepy_late", (0.5,)) for _ in range(N_HELD)]
    ids = [res.id for res in sent]
    wait_for(lambda: len(e2e.ledger.of("started")) >= 2, 20, "two tasks to start")
    held = _held_task_ids(e2e)
    # When the worker is SIGKILLed while it holds running and prefetched messages
    first.kill_group(signal.SIGKILL)
    killed_at = time.time()
    assert first.wait(10) == -signal.SIGKILL
    finished_before = {e.task_id for e in e2e.ledger.of("finished")}
    started_before = {e.task_id for e in e2e.ledger.of("started")}
    held -= finished_before  # (a 0.5 s task cannot finish in the moment before the kill)
    assert len(held) > 2, f"the worker held only {len(held)} unacked message(s)"
    assert held <= set(ids)
    assert len(finished_before) < N_HELD, "everything finished before the kill"
    # And a new worker starts
    e2e.worker("--prefetch-multiplier", "4", pool="threads", concurrency=2, env=env)
    ready_after = time.time() - killed_at
    # Then every task completes, with its result stored
    for res in sent:
        assert res.get(timeout=40) == 0.5
        assert res.state == states.SUCCESS
    all_done_after = time.time() - killed_at
    # And no task finished twice; the ones cut short by the kill ran again
    finished = Counter(e.task_id for e in e2e.ledger.of("finished"))
    assert set(finished) == set(ids)
    assert all(n == 1 for n in finished.values()), finished
    cut_short = started_before - finished_before
    assert cut_short, "no task was running at the kill"
    after_kill = [e for e in e2e.ledger.of("started") if e.at > killed_at]
    assert {e.task_id for e in after_kill} >= held | cut_short
    assert held >= cut_short
    # And nothing is left queued or unacked (acks are batched: allow them a moment)
    wait_for(lambda: e2e.queue_length() == 0 and _unacked(e2e) == 0, 5, "every ack")
    held_starts = [e.at for e in after_kill if e.task_id in held]
    report(
        "redis restore after SIGKILL", visibility_timeout_s=VISIBILITY,
        held_unacked=len(held), cut_short=len(cut_short),
        new_worker_ready_after_s=round(ready_after, 2),
        kill_to_first_restored_start_s=round(min(held_starts) - killed_at, 2),
        kill_to_all_done_s=round(all_done_after, 2),
    )


def _celery_client(e2e: E2E) -> Any:
    celery = pytest.importorskip("celery")
    app = celery.Celery("e2e-celery-client", set_as_current=False)
    app.conf.update(
        broker_url=e2e.url, result_backend=e2e.url,
        broker_transport_options=e2e.transport_options,
        result_backend_transport_options=e2e.backend_options,
    )
    return app


@pytest.mark.parametrize("sender", ["celeriac", "celery"])
def test_countdown_of_twice_the_visibility_timeout_runs_exactly_once(
    redis_e2e: E2E, sender: str
) -> None:
    e2e = redis_e2e
    env = {"E2E_VISIBILITY_TIMEOUT": str(VISIBILITY)}
    # Given two workers whose broker leases last 2 s
    workers = [e2e.worker(pool="threads", concurrency=2, env=env) for _ in range(2)]
    # When a client (celeriac: delayed in Redis; Celery: an ETA message in the queue,
    # held by a worker) sends a task with a countdown of twice the visibility timeout
    countdown = 2 * VISIBILITY
    client = e2e.client if sender == "celeriac" else _celery_client(e2e)
    try:
        sent_at = time.time()
        res = client.send_task("e2e.sleepy", (0.0,), countdown=countdown)
        # Then it runs, not before it is due
        assert res.get(timeout=countdown + 15) == 0.0
        starts = e2e.ledger.of("started", res.id)
        assert starts, "the task never recorded its start"
        assert starts[0].at >= sent_at + countdown - 1e-3, starts[0].at - sent_at
        # And not a second time, even after two more visibility timeouts
        time.sleep(2 * VISIBILITY + 0.5)
        starts = e2e.ledger.of("started", res.id)
        assert len(starts) == 1, f"ran {len(starts)} times: {starts}"
        assert all(w.alive() for w in workers)
        assert e2e.queue_length() == 0
        assert _unacked(e2e) == 0
    finally:
        if client is not e2e.client:
            client.close()
    report(
        f"countdown 2x visibility ({sender} client)", countdown_s=countdown,
        ran_after_s=round(starts[0].at - sent_at, 2),
    )
