"""Remote control, gossip, mingle and autoscaling with real workers, on every transport."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac.testing import start_worker
from celeriac.worker.consumer.gossip import Gossip

#: Set by tests to release the blocking tasks.
RELEASE = threading.Event()


@pytest.fixture
def app(transport_url: str, base_options: dict[str, Any]) -> Iterator[Celeriac]:
    app = Celeriac(
        "ctl",
        broker=transport_url,
        backend=f"memory://{uuid.uuid4().hex}",
        broker_transport_options=base_options,
        set_as_current=False,
    )

    @app.task(name="ctl.block")
    def block(seconds: float) -> float:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not RELEASE.is_set():
            time.sleep(0.01)
        return seconds

    @app.task(name="ctl.ablock")
    async def ablock(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @app.task(name="ctl.add")
    def add(x: int, y: int) -> int:
        return x + y

    RELEASE.clear()
    yield app
    RELEASE.set()
    app.close()


def nodes(replies: list[dict[str, Any]] | None) -> list[str]:
    return sorted(n for r in replies or [] for n in r)


def wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_every_worker_answers_even_with_every_pool_slot_busy(app: Celeriac) -> None:
    with contextlib.ExitStack() as stack:
        busy = stack.enter_context(
            start_worker(app, pool="threads", concurrency=1, hostname="busy@h", shutdown="cold")
        )
        stack.enter_context(start_worker(app, pool="prefork", concurrency=1, hostname="b@h"))
        stack.enter_context(start_worker(app, pool="asyncio", concurrency=1, hostname="c@h"))
        # Given the busy worker runs a long task in its only slot and holds more
        app.tasks["ctl.block"].apply_async((30,), queue="busyq")
        busy.consumer.task_consumer.queues  # noqa: B018 - consumer is up
        assert app.control.add_consumer("busyq", destination=["busy@h"], reply=True) == [
            {"busy@h": {"ok": "add consumer busyq"}}
        ]
        wait(lambda: busy.state.active, what="the busy worker's task to start")
        # When pinging every worker, then all three answer, fast
        start = time.monotonic()
        replies = app.control.ping(timeout=2.0, limit=3)
        assert time.monotonic() - start < 1.5
        assert nodes(replies) == ["b@h", "busy@h", "c@h"]
        # inspect commands have Celery's shapes
        active = app.control.inspect(destination=["busy@h"]).active()
        assert active is not None and [i["name"] for i in active["busy@h"]] == ["ctl.block"]
        stats = app.control.inspect(destination=["b@h"]).stats()
        assert stats is not None and stats["b@h"]["pool"]["max-concurrency"] == 1
        queues = app.control.inspect(destination=["busy@h"]).active_queues()
        assert queues is not None
        assert {q["name"] for q in queues["busy@h"]} == {"celery", "busyq"}
        assert app.control.cancel_consumer("busyq", destination=["busy@h"], reply=True) == [
            {"busy@h": {"ok": "no longer consuming from busyq"}}
        ]
        # an unknown command is an error reply and the workers keep answering
        bad = app.control.broadcast("nosuch", reply=True, destination=["c@h"])
        assert bad == [{"c@h": {"error": "KeyError('nosuch')"}}]
        assert nodes(app.control.ping(limit=3, timeout=2.0)) == ["b@h", "busy@h", "c@h"]


@pytest.mark.parametrize("pool", ["prefork", "threads", "asyncio"])
def test_revoke_terminate_stops_a_running_task_within_a_second(app: Celeriac, pool: str) -> None:
    name = "ctl.ablock" if pool == "asyncio" else "ctl.block"
    with start_worker(app, pool=pool, concurrency=1, hostname=f"{pool}@h") as worker:
        # Given a running task and one waiting behind it in the same worker
        running = app.tasks[name].delay(30)
        waiting = app.tasks[name].delay(30)
        wait(lambda: running.id in worker.state.active, what="the task to start")
        wait(lambda: waiting.id in worker.state.reserved, what="the second one to arrive")
        # When revoking the waiting one and terminating the running one
        assert app.control.revoke(waiting.id, reply=True, limit=1) == [
            {f"{pool}@h": {"ok": f"tasks {{'{waiting.id}'}} flagged as revoked"}}
        ]
        start = time.monotonic()
        reply = app.control.revoke(running.id, terminate=True, reply=True, limit=1)
        assert reply == [{f"{pool}@h": {"ok": f"terminate: {running.id}"}}]
        # Then both are REVOKED, the running one within a second, and neither runs on
        wait(lambda: running.state == states.REVOKED, 1.0, "REVOKED within a second")
        elapsed = time.monotonic() - start
        wait(lambda: waiting.state == states.REVOKED, 2.0, "the waiting task REVOKED")
        wait(lambda: not worker.state.active, 1.0, "no task running")
        assert elapsed < 1.0
        print(f"\n[control] revoke terminate, {pool} pool: {elapsed * 1000:.1f} ms")
        # And the worker runs new work afterwards
        assert app.tasks["ctl.add"].delay(1, 2).get(timeout=10) == 3


def test_control_commands_change_the_worker(app: Celeriac) -> None:
    with start_worker(app, pool="threads", concurrency=2, hostname="w@h") as worker:
        control = app.control
        D = ["w@h"]  # one destination: collecting stops at its reply
        assert control.pool_grow(2, reply=True, destination=D) == [
            {"w@h": {"ok": "pool will grow"}}
        ]
        assert worker.pool.limit == 4
        assert control.pool_shrink(1, reply=True, destination=D) == [
            {"w@h": {"ok": "pool will shrink"}}
        ]
        assert worker.pool.limit == 3
        assert worker.consumer.task_consumer.prefetch_count == 12
        assert control.rate_limit("ctl.add", "5/s", reply=True, destination=D) == [
            {"w@h": {"ok": "new rate limit set successfully"}}
        ]
        assert control.rate_limit("ctl.add", 0, reply=True, destination=D) == [
            {"w@h": {"ok": "rate limit disabled successfully"}}
        ]
        assert control.time_limit("ctl.add", soft=5, hard=10, reply=True, destination=D) == [
            {"w@h": {"ok": "time limits set successfully"}}
        ]
        assert app.tasks["ctl.add"].time_limit == 10
        assert control.time_limit("nosuch", reply=True, destination=D) == [
            {"w@h": {"error": "unknown task"}}
        ]
        assert control.enable_events(reply=True, destination=D) == [
            {"w@h": {"ok": "task events enabled"}}
        ]
        assert worker.consumer.task_events is not None
        assert control.disable_events(reply=True, destination=D) == [
            {"w@h": {"ok": "task events disabled"}}
        ]
        assert control.autoscale(4, 2, reply=True, destination=D) == [
            {"w@h": {"error": "ValueError('Autoscale not enabled')"}}
        ]
        assert control.pool_restart(reply=True, destination=D) == [
            {"w@h": {"error": "ValueError('Pool restarts not enabled')"}}
        ]
        assert control.inspect(destination=D).clock()["w@h"]["clock"] > 0
        # shutdown: no reply, and the worker stops
        assert control.shutdown(reply=True, timeout=0.5, destination=D) == []
        wait(lambda: control.ping(timeout=0.2) == [], 10, "the worker to stop answering")


def test_mingle_and_gossip_between_workers(app: Celeriac) -> None:
    seen: list[str] = []
    with start_worker(app, pool="threads", hostname="a@h", heartbeat_interval=0.2) as a:
        gossip_a = a.consumer.gossip
        assert isinstance(gossip_a, Gossip)
        gossip_a.on_node_join.append(lambda w: seen.append(f"join {w.hostname}"))
        gossip_a.on_node_leave.append(lambda w: seen.append(f"leave {w.hostname}"))
        a.state.revoked.add("revoked-before")
        a.clock.adjust(500)
        # When a second worker starts with mingle
        with start_worker(
            app, pool="threads", hostname="b@h", without_mingle=False, heartbeat_interval=0.2
        ) as b:
            # Then it learned a's revoked ids and moved its clock past a's
            assert "revoked-before" in b.state.revoked
            assert b.clock.value > 500
            # And both see each other through gossip
            wait(lambda: "join b@h" in seen, 5, "a to see b join")
            gossip_b = b.consumer.gossip
            assert gossip_b is not None
            wait(lambda: [w.hostname for w in gossip_b.peers] == ["a@h"], 5, "b to see a")
            # An election: both agree on one winner
            won: dict[str, list[str]] = {"a": [], "b": []}
            gossip_a.on_elected.append(lambda i, t, w: won["a"].append(w))
            gossip_b.on_elected.append(lambda i, t, w: won["b"].append(w))
            app.control.election("e1", "none", None)
            wait(lambda: won["a"] and won["b"], 5, "both to decide")
            assert won["a"] == won["b"]
        wait(lambda: "leave b@h" in seen, 5, "a to see b leave")


def test_autoscaler_grows_under_backlog_and_shrinks_when_idle(app: Celeriac) -> None:
    with start_worker(app, pool="threads", hostname="auto@h", autoscale=(4, 1)) as worker:
        scaler = worker.autoscaler
        scaler.keepalive, scaler.interval = 0.5, 0.2
        assert worker.pool.limit == 1
        for _ in range(4):
            app.tasks["ctl.block"].delay(30)
        wait(lambda: worker.pool.limit == 4, 5, "the pool to grow to 4")
        stats = app.control.inspect().stats()
        assert stats is not None and stats["auto@h"]["autoscaler"]["max"] == 4
        RELEASE.set()
        wait(lambda: worker.pool.limit == 1, 10, "the pool to shrink back to 1")


def test_revoke_by_stamped_headers_drops_held_and_later_messages(app: Celeriac) -> None:
    stamped = {"stamped_headers": ["batch"]}
    with start_worker(app, pool="threads", concurrency=1, hostname="st@h"):
        # Given a task with the stamp batch=b1 due in a moment (it waits in the broker)
        held = app.tasks["ctl.add"].apply_async(
            (1, 1), countdown=1.5, headers={**stamped, "batch": "b1"}
        )
        # When tasks stamped batch=b1 are revoked
        replies = app.control.revoke_by_stamped_headers({"batch": "b1"}, reply=True)
        assert nodes(replies) == ["st@h"]
        # Then the delayed one is revoked when due, and so is one sent afterwards with it,
        # while other stamps and unstamped tasks still run
        later = app.tasks["ctl.add"].apply_async((2, 2), headers={**stamped, "batch": "b1"})
        other = app.tasks["ctl.add"].apply_async((3, 3), headers={**stamped, "batch": "b2"})
        plain = app.tasks["ctl.add"].delay(4, 4)
        assert other.get(timeout=10) == 6 and plain.get(timeout=10) == 8
        wait(lambda: later.state == states.REVOKED, what="the later task to be revoked")
        wait(lambda: held.state == states.REVOKED, what="the held task to be revoked")
