"""Events cross between celeriac and Celery 5 on Redis, both ways.

* The real ``celery events --dump`` prints a celeriac worker's events.
* Celery's own ``EventReceiver`` and ``State`` (what Flower and ``celery events`` use)
  rebuild a celeriac worker's tasks and workers, with Celery's types and fields, in order.
* celeriac's receiver and State see a real Celery worker's events (packed ``task.multi``
  messages included).

Workers are subprocesses (apps in ``apps/``) on a key prefix of the test's own.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from celeriac import states
from celeriac.events import State
from celeriac.testing import capture_events
from tests.e2e.support import wait_for

from .peers import URL, Peers

celery = pytest.importorskip("celery")

pytestmark = [pytest.mark.redis]


def types_for(events: list[dict], uuid: str) -> list[str]:
    found = sorted((e for e in events if e.get("uuid") == uuid), key=lambda e: e["clock"])
    return [e["type"] for e in found]


class CeleryMonitor:
    """Celery's EventReceiver + State on a thread, as Flower runs them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.events.State()
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.receiver: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_event(self, event: dict) -> None:
        with self.lock:
            self.events.append(dict(event))
        self.state.event(event)

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                self.receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                try:
                    self.receiver.capture(limit=None, timeout=60, wakeup=False)
                except TimeoutError:
                    pass
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.events)

    def __enter__(self) -> CeleryMonitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)


def test_celery_events_dump_prints_a_celeriac_workers_events(peers: Peers) -> None:
    # Given the real `celery events --dump` watching the namespace
    dump = peers._spawn(
        [sys.executable, "-m", "celery", "-A", "celery_peer", "events", "--dump"],
        "dump",
        None,
    )
    # When a celeriac worker with task events starts (heartbeats reach the dumper as soon
    # as it is subscribed) and runs a task
    peers.celeriac_worker("ev", extra=("-E",))
    wait_for(lambda: "worker-heartbeat" in dump.output() or "heartbeat" in dump.output(), 20,
             "the dumper to see the celeriac worker")  # fmt: skip
    res = peers.celeriac.send_task("interop.add", (2, 3), queue="ev")
    assert res.get(timeout=20) == 5

    # Then the dump shows the task's events
    def lines() -> list[str]:
        return [ln for ln in dump.output().splitlines() if res.id in ln]

    wait_for(lambda: any("succeeded" in ln for ln in lines()), 20, "the task-succeeded line")
    text = "\n".join(lines())
    assert "task received" in text and "task started" in text, dump.tail()
    assert "interop.add" in text and "result=5" in text.replace("'", ""), text


def test_celery_receiver_and_state_rebuild_a_celeriac_worker(peers: Peers) -> None:
    client = peers.celeriac
    client.conf.task_send_sent_event = True
    with CeleryMonitor(peers.celery) as monitor:
        worker = peers.celeriac_worker("ev", extra=("-E",))
        wait_for(
            lambda: any(e["type"] == "worker-heartbeat" for e in monitor.snapshot()), 20,
            "Celery's receiver to hear the celeriac worker",
        )  # fmt: skip
        ok = client.send_task("interop.add", (2, 3), queue="ev")
        bad = client.send_task("interop.fail", ("bad value", 7), queue="ev")
        assert ok.get(timeout=20) == 5
        with pytest.raises(Exception, match="bad value"):
            bad.get(timeout=20)
        wait_for(lambda: "task-failed" in types_for(monitor.snapshot(), bad.id)
                 and "task-succeeded" in types_for(monitor.snapshot(), ok.id), 20,
                 "Celery's receiver to see both tasks finish")  # fmt: skip
    assert monitor.error is None
    events = monitor.snapshot()
    # Types, in clock order, as Celery names them
    assert types_for(events, ok.id) == [
        "task-sent", "task-received", "task-started", "task-succeeded"
    ]  # fmt: skip
    assert types_for(events, bad.id)[-1] == "task-failed"
    # Celery's State agrees, with the fields Flower shows
    state = monitor.state
    task = state.tasks[ok.id]
    assert (task.state, task.name, task.args, task.result) == ("SUCCESS", "interop.add",
                                                              "(2, 3)", "5")  # fmt: skip
    assert task.runtime is not None and task.runtime >= 0
    assert task.worker.hostname in worker.output()
    assert state.tasks[bad.id].state == "FAILURE"
    assert "ValueError" in state.tasks[bad.id].exception
    hostname = task.worker.hostname
    assert state.workers[hostname].alive
    assert state.workers[hostname].sw_ident == "py-celeriac"


def test_celeriac_receiver_and_state_see_a_celery_worker(peers: Peers) -> None:
    transport = {"global_keyprefix": peers.prefix}
    with capture_events(url=URL, transport_options=transport) as events:
        peers.celery_worker("cq", extra=("-E",))
        ok = peers.celeriac.send_task("interop.add", (2, 3), queue="cq")
        bad = peers.celeriac.send_task("interop.fail", ("bad value", 7), queue="cq")
        assert ok.get(timeout=20) == 5
        with pytest.raises(Exception, match="bad value"):
            bad.get(timeout=20)
        events.wait_for(
            lambda evs: (
                "task-succeeded" in types_for(evs, ok.id)
                and "task-failed" in types_for(evs, bad.id)
            ),
            timeout=20,
        )
    got = events.events
    assert types_for(got, ok.id) == ["task-received", "task-started", "task-succeeded"]
    received = next(e for e in got if e.get("uuid") == ok.id and e["type"] == "task-received")
    assert (received["name"], received["args"], received["retries"]) == ("interop.add",
                                                                         "(2, 3)", 0)  # fmt: skip
    assert {"hostname", "timestamp", "utcoffset", "pid", "clock", "local_received"} <= set(received)
    state = State()
    for event in got:
        state.event(event)
    assert state.tasks[ok.id].state == states.SUCCESS
    assert state.tasks[ok.id].result == "5"
    assert state.tasks[bad.id].state == states.FAILURE
    assert "bad value" in (state.tasks[bad.id].exception or "")
    celery_host = state.tasks[ok.id].worker
    assert celery_host is not None and celery_host.startswith("celery")
    assert state.worker_counters(celery_host)["task-succeeded"] >= 1
