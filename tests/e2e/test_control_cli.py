"""``celeriac inspect / control / status / revoke`` against worker subprocesses."""

from __future__ import annotations

import json
import signal
import time

from celeriac import states

from .support import E2E, report, wait_for


def test_inspect_control_status_and_revoke_terminate(e2e: E2E) -> None:
    # Given two workers, one of them with every pool slot busy
    busy = e2e.worker("--statedb", str(e2e.dir / "w-busy.state"), concurrency=1)
    e2e.worker()
    long = e2e.client.send_task("e2e.sleepy", (30,))
    wait_for(lambda: e2e.ledger.of("started", long.id), 20, "the long task to start")

    # When asking for status and ping: both answer, the busy one too (the second worker
    # may still be mingling: it answers within a few seconds)
    def both() -> bool:
        status = e2e.cli("status", "--json")
        return status.returncode == 0 and len(json.loads(status.stdout)) == 2

    wait_for(both, 20, "both workers to answer status")
    ping = e2e.cli("inspect", "ping")
    assert ping.returncode == 0 and "pong" in ping.stdout and "2 nodes online" in ping.stdout

    # inspect active finds the long task on one worker, with Celery's request-info shape
    active = json.loads(e2e.cli("inspect", "active", "--json").stdout)
    running = [(node, item) for node, items in active.items() for item in items]
    assert [item["id"] for _, item in running] == [long.id]
    node, item = running[0]
    assert item["name"] == "e2e.sleepy" and item["args"] == [30] and item["worker_pid"]

    # stats, registered, query_task, conf answer per node
    stats = json.loads(e2e.cli("inspect", "stats", "-d", node, "--json").stdout)
    assert set(stats) == {node}
    assert {"total", "pid", "clock", "uptime", "pool", "broker", "prefetch_count"} <= set(
        stats[node]
    )
    registered = json.loads(e2e.cli("inspect", "registered", "--json").stdout)
    assert all("e2e.add" in names for names in registered.values())
    query = json.loads(e2e.cli("inspect", "query_task", long.id, "--json").stdout)
    assert query[node][long.id][0] == "active"

    # control commands: rate_limit ok, an unknown task is an error reply, not a crash
    rl = json.loads(e2e.cli("control", "rate_limit", "e2e.add", "100/m", "--json").stdout)
    assert all(v == {"ok": "new rate limit set successfully"} for v in rl.values())
    bad = json.loads(e2e.cli("control", "rate_limit", "nosuch", "1/s", "--json").stdout)
    assert all(v == {"error": "unknown task"} for v in bad.values())
    human = e2e.cli("inspect", "stats")
    assert human.returncode == 0 and "2 nodes online" in human.stdout

    # When revoking the running task with --terminate: it stops within a second
    start = time.monotonic()
    out = e2e.cli("revoke", long.id, "--terminate", "--json")
    assert out.returncode == 0, out.stderr
    assert f"terminate: {long.id}" in out.stdout
    wait_for(lambda: long.state == states.REVOKED, 5, "REVOKED state")
    report(
        "revoke --terminate (threads pool, CLI round trip)", s=round(time.monotonic() - start, 3)
    )
    assert not e2e.ledger.of("finished", long.id)

    # And the revoked id survives a restart of the worker through its state db
    busy.send(signal.SIGTERM)
    assert busy.wait(30) == 0
    db = json.loads((e2e.dir / "w-busy.state").read_text())
    assert long.id in db["revoked"] and db["clock"] > 0


def test_a_task_revoked_while_no_worker_runs_is_skipped_when_they_start(e2e: E2E) -> None:
    # Given no worker at all, a queued task, and a revoke nobody hears
    doomed = e2e.client.send_task("e2e.sleepy", (0.1,))
    kept = e2e.client.send_task("e2e.sleepy", (0.1,))
    assert e2e.client.control.revoke(doomed.id, reply=True, timeout=0.3) == []
    # When workers start
    e2e.worker("--without-mingle")
    # Then the revoked task is not run, the other one is
    assert kept.get(timeout=30) == 0.1
    wait_for(lambda: doomed.state == states.REVOKED, 10, "the revoked task to be REVOKED")
    assert not e2e.ledger.of("started", doomed.id)
