"""Events end to end on every transport: a real worker with -E, a client, a receiver, State.

One test body per transport (memory, sqlite, redis): the worker's and the client's events
arrive with Celery's types and fields, in clock order per task, and State rebuilt from
them agrees with the results.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac.events import EventDispatcher, EventReceiver, State
from celeriac.messaging import Connection
from celeriac.testing import capture_events, start_worker

COMMON = {"hostname", "timestamp", "utcoffset", "pid", "clock", "type", "local_received"}


@pytest.fixture
def app(transport_url: str, base_options: dict[str, Any]) -> Any:
    app = Celeriac(
        "ev",
        broker=transport_url,
        backend=f"memory://{uuid.uuid4().hex}",
        broker_transport_options=base_options,
        worker_send_task_events=True,
        task_send_sent_event=True,
        set_as_current=False,
    )

    @app.task(name="ev.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="ev.fail")
    def fail() -> None:
        raise ValueError("bad", 7)

    @app.task(name="ev.flaky", bind=True, max_retries=1, default_retry_delay=0.01)
    def flaky(self: Any) -> int:
        if self.request.retries < 1:
            raise self.retry()
        return self.request.retries

    yield app
    app.close()


def types_of(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def worker_events(events: Any, task_id: str) -> list[dict]:
    """A task's events sent by the worker, in the worker's clock order."""
    return [e for e in events.for_task(task_id) if e["type"] != "task-sent"]


def test_a_worker_with_task_events_reports_every_state_change(app: Celeriac) -> None:
    with capture_events(app) as events, start_worker(app, hostname="ev1@%h") as worker:
        ok = app.tasks["ev.add"].delay(2, 3)
        bad = app.tasks["ev.fail"].delay()
        flaky = app.tasks["ev.flaky"].delay()
        assert ok.get(timeout=10) == 5
        with pytest.raises(ValueError):
            bad.get(timeout=10)
        assert flaky.get(timeout=10) == 1
        events.wait_for(lambda evs: "task-succeeded" in types_of(events.for_task(flaky.id)))
        events.wait_for(lambda evs: "task-failed" in types_of(events.for_task(bad.id)))
        events.wait_for(lambda evs: "task-succeeded" in types_of(events.for_task(ok.id)))
    # worker-offline went out at the warm stop
    online = events.of_type("worker-online")
    assert [e["hostname"] for e in online] == [worker.hostname]
    assert events.wait_for(lambda evs: events.of_type("worker-offline"), timeout=5)

    # Then each task's events are the Celery types: the client's task-sent, and the
    # worker's in its clock order (the client's clock is its own, so task-sent is not
    # ordered against the worker's events by clock; State ranks it lowest instead)
    assert types_of(worker_events(events, ok.id)) == [
        "task-received", "task-started", "task-succeeded"
    ]  # fmt: skip
    assert types_of(worker_events(events, bad.id)) == [
        "task-received", "task-started", "task-failed"
    ]  # fmt: skip
    assert types_of(worker_events(events, flaky.id)) == [
        "task-received", "task-started", "task-retried",
        "task-received", "task-started", "task-succeeded",
    ]  # fmt: skip
    for tid in (ok.id, bad.id, flaky.id):
        assert types_of(events.for_task(tid)).count("task-sent") == 1

    # And they carry the fields Celery sends
    (sent,) = [e for e in events.for_task(ok.id) if e["type"] == "task-sent"]
    received, started, succeeded = worker_events(events, ok.id)
    assert set(sent) - COMMON == {
        "uuid", "root_id", "parent_id", "name", "args", "kwargs", "retries", "eta",
        "expires", "queue", "exchange", "routing_key",
    }  # fmt: skip
    assert (sent["name"], sent["args"], sent["queue"]) == ("ev.add", "(2, 3)", "celery")
    assert set(received) - COMMON == {
        "uuid", "name", "args", "kwargs", "root_id", "parent_id", "retries", "eta", "expires"
    }  # fmt: skip
    assert received["hostname"] == worker.hostname and received["args"] == "(2, 3)"
    assert set(started) - COMMON == {"uuid"}
    assert (succeeded["result"], type(succeeded["runtime"])) == ("5", float)
    failed = events.for_task(bad.id)[-1]
    assert failed["exception"] == "ValueError('bad', 7)"
    assert "Traceback" in failed["traceback"]
    retried = worker_events(events, flaky.id)[2]
    assert set(retried) - COMMON == {"uuid", "exception", "traceback"}
    assert worker_events(events, flaky.id)[3]["retries"] == 1
    for event in online:
        assert {"freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"} <= set(
            event
        )

    # And State rebuilt from the events agrees with the results
    state = State()
    for event in events.events:
        state.event(event)
    assert state.tasks[ok.id].state == states.SUCCESS
    assert state.tasks[bad.id].state == states.FAILURE
    assert state.tasks[flaky.id].state == states.SUCCESS
    assert state.tasks[ok.id].worker == worker.hostname
    assert state.worker_counters(worker.hostname)["task-succeeded"] == 2


def test_without_task_events_only_worker_events_are_sent(app: Celeriac) -> None:
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
    with capture_events(app) as events, start_worker(app) as worker:
        assert app.tasks["ev.add"].delay(1, 1).get(timeout=10) == 2
        events.wait_for(lambda evs: events.of_type("worker-online"))
    assert {e["type"] for e in events.events} <= {"worker-online", "worker-offline",
                                                 "worker-heartbeat"}  # fmt: skip
    assert events.of_type("worker-online")[0]["hostname"] == worker.hostname


@pytest.mark.asyncio
async def test_receiver_filters_by_routing_key_and_unpacks_batches(
    transport_url: str, base_options: dict[str, Any]
) -> None:
    # Given a receiver of task events only
    sender = Connection(transport_url, transport_options=base_options)
    listener = Connection(transport_url, transport_options=base_options)
    got: list[dict] = []
    receiver = EventReceiver(listener, {"task-succeeded": got.append}, routing_key="task.#")
    await receiver.declare()
    dispatcher = EventDispatcher(sender, "w@h", buffer_group=["task"], buffer_limit=3)
    await dispatcher.attach()
    # When a worker event and a batch of task events are sent
    dispatcher.send("worker-heartbeat")
    for i in range(5):
        dispatcher.send("task-succeeded", uuid=f"t{i}", result="1", runtime=0.1)
    await dispatcher.flush()
    # Then only the task events arrive, unpacked, each with local_received
    count = await receiver.capture(limit=5, timeout=5)
    assert count == 5
    assert [e["uuid"] for e in got] == [f"t{i}" for i in range(5)]
    assert all("local_received" in e for e in got)
    assert receiver.clock.value > max(e["clock"] for e in got)
    await sender.close()
    await listener.close()


@pytest.mark.asyncio
async def test_capture_returns_at_its_timeout_without_events(
    transport_url: str, base_options: dict[str, Any]
) -> None:
    connection = Connection(transport_url, transport_options=base_options)
    receiver = EventReceiver(connection, {"*": lambda e: None})
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await receiver.capture(timeout=0.3) == 0
    assert loop.time() - start < 2.0
    await connection.close()


def test_capture_events_needs_a_broker(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs an app or a url"), capture_events():
        pass
