"""EventDispatcher: stamping, group filters, packing, one publish per loop iteration, offline."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import orjson
import pytest

from celeriac.events import EventDispatcher, LamportClock, fix_event, routing_key_for
from celeriac.exceptions import ConnectionBrokenError
from celeriac.messaging import Connection
from celeriac.messaging.transports.base import Outgoing

asyncio_test = pytest.mark.asyncio


class Recorder:
    """Wraps a transport's publish to see every broker call."""

    def __init__(self, connection: Connection) -> None:
        self.calls: list[list[Outgoing]] = []
        self.fail = 0
        transport = connection.transport
        original = transport.publish

        async def publish(batch: Any) -> None:
            if self.fail:
                self.fail -= 1
                raise ConnectionBrokenError("injected")
            self.calls.append(list(batch))
            await original(batch)

        transport.publish = publish  # type: ignore[method-assign]

    def messages(self) -> list[tuple[str, Any]]:
        return [
            (out.routing_key, orjson.loads(out.message.body)) for call in self.calls for out in call
        ]


async def connected() -> tuple[Connection, Recorder]:
    connection = Connection(f"memory://{uuid.uuid4().hex}", max_retries=0)
    await connection.connect()
    return connection, Recorder(connection)


@asyncio_test
async def test_events_of_one_iteration_go_out_in_one_broker_call() -> None:
    # Given a dispatcher that packs task events, as a worker's does
    connection, recorder = await connected()
    dispatcher = EventDispatcher(connection, "w1@h", buffer_group=["task"], buffer_limit=24)
    await dispatcher.attach()
    # When one iteration produces 50 task events and a worker event
    for i in range(50):
        dispatcher.send("task-received", uuid=f"t{i}", name="add")
    dispatcher.send("worker-online", freq=2.0)
    await dispatcher.flush()
    # Then one broker call carried them: packs of 24, 24, 2 and the worker event alone
    assert len(recorder.calls) == 1
    messages = recorder.messages()
    assert [(rk, len(b) if isinstance(b, list) else 1) for rk, b in messages] == [
        ("task.multi", 24),
        ("task.multi", 24),
        ("worker.online", 1),
        ("task.multi", 2),
    ]
    assert dispatcher.statistics().publishes == 1
    await connection.close()


@asyncio_test
async def test_every_event_carries_the_common_fields_and_a_forwarded_clock() -> None:
    connection, recorder = await connected()
    clock = LamportClock(41)
    dispatcher = EventDispatcher(connection, "w1@h", clock=clock)
    await dispatcher.attach()
    dispatcher.send("task-succeeded", uuid="t1", result="3", runtime=0.5)
    dispatcher.send("worker-heartbeat", blind=True)
    await dispatcher.flush()
    (rk1, first), (rk2, second) = recorder.messages()
    assert (rk1, rk2) == ("task.succeeded", "worker.heartbeat")
    assert first["clock"] == 42 and second["clock"] is None
    assert first["hostname"] == "w1@h" and first["pid"] == os.getpid()
    assert first["type"] == "task-succeeded" and first["result"] == "3"
    assert isinstance(first["timestamp"], float) and isinstance(first["utcoffset"], int)
    message = recorder.calls[0][0].message
    assert message.headers == {"hostname": "w1@h"}
    assert message.properties["delivery_mode"] == 1
    assert message.content_type == "application/json"
    await connection.close()


@asyncio_test
async def test_groups_and_the_enabled_switch_filter_events() -> None:
    connection, recorder = await connected()
    switched: list[str] = []
    dispatcher = EventDispatcher(
        connection,
        "w1@h",
        groups=["worker"],
        on_enabled=[lambda: switched.append("on")],
        on_disabled=[lambda: switched.append("off")],
    )
    await dispatcher.attach()
    assert dispatcher.send("task-started", uuid="t") is None
    assert dispatcher.send("worker-online") is not None
    dispatcher.disable()
    assert dispatcher.send("worker-heartbeat") is None
    dispatcher.enable()
    await dispatcher.flush()
    assert [rk for rk, _ in recorder.messages()] == ["worker.online"]
    assert switched == ["off", "on"]
    assert dispatcher.statistics().filtered == 2
    await connection.close()


@asyncio_test
async def test_events_sent_before_a_connection_wait_and_go_out_on_attach() -> None:
    connection, recorder = await connected()
    dispatcher = EventDispatcher(None, "w1@h", offline_limit=3)
    for i in range(5):
        dispatcher.send("worker-heartbeat", n=i)
    await dispatcher.flush()
    # Bounded: only the newest three are kept
    assert dispatcher.offline == 3 and dispatcher.statistics().dropped == 2
    await dispatcher.attach(connection)
    assert [body["n"] for _, body in recorder.messages()] == [2, 3, 4]
    assert dispatcher.offline == 0
    await connection.close()


@asyncio_test
async def test_a_failed_publish_is_kept_and_flushed_after_reconnect() -> None:
    connection, recorder = await connected()
    dispatcher = EventDispatcher(connection, "w1@h")
    await dispatcher.attach()
    # Given the broker fails the next publish (max_retries=0: no retry)
    recorder.fail = 1
    dispatcher.send("worker-heartbeat", n=1)
    await dispatcher.flush()
    assert dispatcher.offline == 1 and recorder.calls == []
    # When the connection reconnects
    for hook in connection.on_reconnect:
        hook()
    await asyncio.sleep(0)
    await dispatcher.flush()
    # Then the kept event goes out
    assert [body["n"] for _, body in recorder.messages()] == [1]
    assert dispatcher.offline == 0
    await connection.close()


@asyncio_test
async def test_without_buffer_while_offline_failed_events_are_dropped() -> None:
    connection, recorder = await connected()
    dispatcher = EventDispatcher(connection, "w1@h", buffer_while_offline=False)
    await dispatcher.attach()
    recorder.fail = 1
    dispatcher.send("worker-heartbeat")
    await dispatcher.flush()
    assert dispatcher.offline == 0 and dispatcher.statistics().dropped == 1
    await connection.close()


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="buffer_limit"):
        EventDispatcher(None, "w", buffer_limit=0)


def test_routing_key_from_type() -> None:
    assert routing_key_for("worker-elect-ack") == "worker.elect.ack"


def test_receiver_fix_up_adjusts_clock_and_localizes_timestamps() -> None:
    clock = LamportClock(10)
    event = fix_event({"type": "task-started", "clock": 20, "timestamp": 100.0, "utcoffset": 0},
                      clock, 5.0, local_offset=-1)  # fmt: skip
    # Sender at UTC (0), receiver at UTC+1 (-1): Celery's rule, ts - (sent - here) * 3600
    assert event == {"type": "task-started", "clock": 20, "timestamp": -3500.0, "utcoffset": 0,
                     "local_received": 5.0}  # fmt: skip
    assert clock.value == 21
    # Clients' task-sent events are placed at the receiver's clock
    sent = fix_event({"type": "task-sent", "clock": 99}, clock, 6.0, local_offset=0)
    assert sent["clock"] == 20 and clock.value == 22
    # An event without a clock gets one
    blind = fix_event({"type": "worker-heartbeat", "clock": None}, clock, 7.0, local_offset=0)
    assert blind["clock"] == 23
