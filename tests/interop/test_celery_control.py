"""Remote control crosses between celeriac and Celery 5 on Redis, both ways.

* The real ``celery inspect ping/active/stats`` and ``celery control revoke/terminate``
  address a celeriac worker and get Celery-shaped replies.
* ``celeriac inspect ping`` gets replies from a real Celery worker.
* A celeriac worker and a Celery worker see each other through gossip and mingle.
"""

from __future__ import annotations

import json
import time

import pytest

from celeriac import states
from tests.e2e.support import wait_for

from .peers import Peers

celery = pytest.importorskip("celery")

pytestmark = [pytest.mark.redis]


def replies_of(out: str) -> dict:
    """``celery ... --json`` prints one JSON document (``inspect``: ``{node: reply}``,
    ``control``: ``[{node: reply}, ...]``), possibly after log lines."""
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
        if line.startswith("["):
            return {k: v for item in json.loads(line) for k, v in item.items()}
    raise AssertionError(f"no JSON in {out!r}")


def test_celery_cli_inspects_and_controls_a_celeriac_worker(peers: Peers) -> None:
    # Given a celeriac worker whose only slot runs a long task, with one more waiting
    peers.celeriac_worker("work", concurrency=1)
    long = peers.celeriac.send_task("interop.count", (30,), queue="work")
    waiting = peers.celeriac.send_task("interop.count", (30,), queue="work")
    wait_for(lambda: peers.runs([long.id])[long.id] == 1, 20, "the long task to start")

    # When Celery's own CLI pings, inspects and revokes
    ping = peers.run("celery", "-A", "celery_peer", "inspect", "ping", "-j", "-t", "3")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    (node,) = replies_of(ping.stdout)
    assert replies_of(ping.stdout)[node] == {"ok": "pong"}

    active = peers.run("celery", "-A", "celery_peer", "inspect", "active", "-j", "-d", node)
    (info,) = replies_of(active.stdout)[node]
    assert info["id"] == long.id and info["name"] == "interop.count" and info["args"] == [30]
    assert {"time_start", "acknowledged", "delivery_info", "worker_pid", "hostname"} <= set(info)

    stats = peers.run("celery", "-A", "celery_peer", "inspect", "stats", "-j", "-d", node)
    st = replies_of(stats.stdout)[node]
    assert {"total", "pid", "clock", "uptime", "pool", "broker", "prefetch_count"} <= set(st)
    assert st["pool"]["max-concurrency"] == 1 and st["broker"]["transport"] == "redis"

    revoke = peers.run("celery", "-A", "celery_peer", "control", "revoke", waiting.id, "-j")
    assert replies_of(revoke.stdout)[node] == {"ok": f"tasks {{'{waiting.id}'}} flagged as revoked"}
    start = time.monotonic()
    term = peers.run(
        "celery", "-A", "celery_peer", "control", "terminate", "SIGKILL", long.id, "-j"
    )
    assert replies_of(term.stdout)[node] == {"ok": f"terminate: {long.id}"}

    # Then the running task stops, neither task completes, and the worker stays up
    wait_for(lambda: long.state == states.REVOKED, 10, "the terminated task REVOKED")
    wait_for(lambda: waiting.state == states.REVOKED, 10, "the revoked task REVOKED")
    print(f"\n[interop] celery control terminate -> REVOKED in {time.monotonic() - start:.2f}s")
    assert peers.runs([waiting.id])[waiting.id] == 0
    assert peers.celery.send_task("interop.add", (2, 3), queue="work").get(timeout=20) == 5


def test_celeriac_cli_pings_and_inspects_a_celery_worker(peers: Peers) -> None:
    peers.celery_worker()
    ping = peers.run("celeriac", "-A", "celeriac_peer", "inspect", "ping", "--json", "-t", "3")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    replies = json.loads(ping.stdout)
    (node,) = replies
    assert node.startswith("celery") and replies[node] == {"ok": "pong"}
    stats = peers.run("celeriac", "-A", "celeriac_peer", "inspect", "stats", "-d", node, "--json")
    st = json.loads(stats.stdout)[node]
    assert st["pid"] > 0 and st["pool"]["max-concurrency"] == 1
    human = peers.run("celeriac", "-A", "celeriac_peer", "inspect", "registered", "-d", node)
    assert "interop.add" in human.stdout and "1 node online" in human.stdout


def test_celeriac_and_celery_workers_meet_through_mingle_and_gossip(peers: Peers) -> None:
    # Given a celeriac worker that knows one revoked id
    first = peers.celeriac_worker(node="cx")
    ping = peers.celeriac.control.ping(timeout=1.0)
    (cx,) = [n for r in ping for n in r]
    peers.celeriac.control.revoke("revoked-at-celeriac", destination=[cx], reply=True)

    # When a Celery worker starts with mingle and gossip on
    celery_proc = peers.celery_worker(cluster=True, extra=("-l", "debug"))
    names = sorted(n for r in peers.celeriac.control.ping(timeout=1.0) for n in r)
    (cy,) = [n for n in names if n != cx]
    # Then Celery's mingle learned celeriac's revoked id, and its gossip saw celeriac
    revoked = peers.celeriac.control.inspect(destination=[cy]).revoked()
    assert revoked is not None and "revoked-at-celeriac" in revoked[cy]
    assert "mingle: sync with 1 nodes" in celery_proc.output()
    wait_for(lambda: f"{cx} joined the party" in celery_proc.output(), 10, "Celery to see cx")

    # And a celeriac worker started now mingles with both and sees the Celery worker
    peers.celeriac.control.revoke("revoked-at-celery", destination=[cy], reply=True)
    second = peers.celeriac_worker(node="cz")
    assert "mingle: sync with 2 nodes" in second.output()
    names = sorted(n for r in peers.celeriac.control.ping(timeout=1.0) for n in r)
    (cz,) = [n for n in names if n not in (cx, cy)]
    got = peers.celeriac.control.inspect(destination=[cz]).revoked()
    assert got is not None
    assert {"revoked-at-celeriac", "revoked-at-celery"} <= set(got[cz])
    wait_for(lambda: f"{cy} joined the party" in second.output(), 10, "celeriac to see Celery")
    assert first.alive() and celery_proc.alive()
