"""celeriac's Redis transport and kombu's (what Celery 5 uses) on the same Redis keys.

Each test runs one side through the real ``kombu`` package and the other through
celeriac's transport, with one key prefix, so every key, entry and channel that crosses
between them is the real thing.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from celeriac.messaging import Exchange, Message, Queue
from celeriac.messaging.transports.base import Outgoing
from tests.redis_keys import delete_matching

from .conftest import require_service

kombu = pytest.importorskip("kombu")
redis = pytest.importorskip("redis")
from celeriac.messaging.transports.redis import RedisTransport  # noqa: E402

T = TypeVar("T")
URL = "redis://127.0.0.1:6379/15"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def prefix() -> Iterator[str]:
    require_service("redis")
    value = f"k{uuid.uuid4().hex[:10]}:"
    yield value
    raw = redis.Redis(host="127.0.0.1", port=6379, db=15)
    delete_matching(raw, f"{value}*")
    raw.close()


def kombu_connection(prefix: str, **options: Any) -> Any:
    return kombu.Connection(URL, transport_options={"global_keyprefix": prefix, **options})


async def celeriac_transport(prefix: str, **options: Any) -> RedisTransport:
    transport = RedisTransport(URL, {"global_keyprefix": prefix, **options})
    await transport.connect()
    return transport


def test_kombu_publishes_celeriac_consumes(prefix: str) -> None:
    exchange = kombu.Exchange("jobs", type="direct")
    queue = kombu.Queue("jobs", exchange, routing_key="jobs")
    with kombu_connection(prefix) as conn:
        producer = conn.Producer(serializer="json")
        producer.publish(
            {"n": 1}, exchange=exchange, routing_key="jobs", declare=[queue],
            headers={"task": "t.x", "id": "a"}, priority=0, correlation_id="a",
        )  # fmt: skip
        producer.publish(
            {"n": 2}, exchange=exchange, routing_key="jobs", declare=[queue],
            headers={"task": "t.x", "id": "b"}, priority=9, correlation_id="b",
        )  # fmt: skip

    async def main() -> None:
        t = await celeriac_transport(prefix)
        try:
            got = await t.fetch(["jobs"], 10, 1.0)
            # Then both arrive, priority 0 first (kombu's order on Redis), facts intact
            assert [m.headers["id"] for m in got] == ["a", "b"]
            first = got[0]
            assert first.body == b'{"n": 1}'
            assert first.content_type == "application/json"
            assert first.properties["correlation_id"] == "a"
            assert first.delivery_info["exchange"] == "jobs"
            assert first.delivery_info["routing_key"] == "jobs"
            await t.ack(got)
            assert await t.queue_length("jobs") == 0
        finally:
            await t.close()

    run(main())


def test_celeriac_publishes_kombu_consumes(prefix: str) -> None:
    async def main() -> None:
        t = await celeriac_transport(prefix)
        try:
            await t.declare_queue(Queue("jobs", Exchange("jobs"), "jobs"))
            props = {"correlation_id": "c1", "priority": 0, "delivery_mode": 2}
            await t.publish(
                [Outgoing(Message(b'{"x": 1}', {"task": "t.y"}, props), "jobs", "jobs")]
            )
        finally:
            await t.close()

    run(main())
    with kombu_connection(prefix) as conn:
        simple = conn.SimpleQueue(kombu.Queue("jobs", kombu.Exchange("jobs"), "jobs"))
        message = simple.get(timeout=2)
        assert message.payload == {"x": 1}
        assert message.headers["task"] == "t.y"
        assert message.properties["correlation_id"] == "c1"
        assert message.delivery_info["routing_key"] == "jobs"
        message.ack()
        simple.close()


def test_a_dead_kombu_consumers_message_is_restored_by_celeriac(prefix: str) -> None:
    # Given a kombu consumer that claimed a message and died without acking it
    with kombu_connection(prefix) as conn:
        queue = kombu.Queue("jobs", kombu.Exchange("jobs"), "jobs")
        conn.Producer().publish(
            {"lost": True}, exchange="jobs", routing_key="jobs", declare=[queue],
            serializer="json",
        )  # fmt: skip
        channel = conn.channel()
        claimed = queue(channel).get(no_ack=False)
        assert claimed is not None
        tag = claimed.delivery_tag
        channel.qos.restore_at_shutdown = False  # a crash: nothing is given back on the way out

    async def main() -> None:
        # When celeriac's transport looks after the kombu visibility timeout has passed
        t = await celeriac_transport(prefix, visibility_timeout=0.5)
        try:
            assert await t.fetch(["jobs"], 1, 0.1) == []
            (again,) = await t.fetch(["jobs"], 1, 3.0)
            # Then the message is back, flagged as redelivered, same delivery tag
            assert again.delivery_tag == tag
            assert again.redelivered is True
            assert again.body == b'{"lost": true}'
            await t.ack([again])
        finally:
            await t.close()

    run(main())


def test_topic_bindings_route_kombu_publishes(prefix: str) -> None:
    async def main() -> None:
        t = await celeriac_transport(prefix)
        try:
            await t.declare_queue(Queue("images", Exchange("media", "topic"), "image.*"))
            await t.declare_queue(Queue("all", Exchange("media", "topic"), "#"))
        finally:
            await t.close()

    run(main())
    with kombu_connection(prefix) as conn:
        media = kombu.Exchange("media", type="topic")
        producer = conn.Producer(serializer="json")
        producer.publish({"k": "png"}, exchange=media, routing_key="image.png", declare=[media])
        producer.publish({"k": "mp4"}, exchange=media, routing_key="video.mp4")

    async def check() -> None:
        t = await celeriac_transport(prefix)
        try:
            assert await t.queue_length("images") == 1
            assert await t.queue_length("all") == 2
        finally:
            await t.close()

    run(check())


def test_fanout_crosses_both_ways(prefix: str) -> None:
    bus = kombu.Exchange("bus", type="fanout")
    received: list[Any] = []
    ready = threading.Event()
    stop = threading.Event()

    def kombu_listener() -> None:
        with kombu_connection(prefix) as conn:
            queue = kombu.Queue(f"bus.{uuid.uuid4().hex}", bus, auto_delete=True)
            with conn.Consumer(queue, callbacks=[lambda body, m: received.append(body)]):
                ready.set()
                while not stop.is_set():
                    try:
                        conn.drain_events(timeout=0.1)
                    except TimeoutError:
                        pass
                    except OSError:
                        pass

    thread = threading.Thread(target=kombu_listener, daemon=True)
    thread.start()
    assert ready.wait(5)
    time.sleep(0.2)  # let the PSUBSCRIBE reach the server

    async def main() -> None:
        t = await celeriac_transport(prefix)
        try:
            await t.declare_queue(Queue("mine", Exchange("bus", "fanout")))
            # celeriac -> kombu
            body = b'{"from": "celeriac"}'
            await t.publish([Outgoing(Message(body), "bus", "")])
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert received == [{"from": "celeriac"}]
            # kombu -> celeriac
            with kombu_connection(prefix) as conn:
                conn.Producer(serializer="json").publish(
                    {"from": "kombu"}, exchange=bus, declare=[bus]
                )
            # (the celeriac queue bound to the exchange got celeriac's message too)
            got: list[Message] = []
            deadline = time.monotonic() + 5
            while len(got) < 2 and time.monotonic() < deadline:
                got += await t.fetch(["mine"], 5, 0.5)
            assert [m.body for m in got] == [body, b'{"from": "kombu"}']
            assert got[1].delivery_info["exchange"] == "bus"
            await t.ack(got)
        finally:
            await t.close()

    try:
        run(main())
    finally:
        stop.set()
        thread.join(5)


def test_envelope_body_is_base64_as_kombu_writes_it(prefix: str) -> None:
    async def main() -> None:
        t = await celeriac_transport(prefix)
        try:
            await t.publish([Outgoing(Message(b"\x00\xffbinary"), "", "raw")])
        finally:
            await t.close()

    run(main())
    raw = redis.Redis(host="127.0.0.1", port=6379, db=15)
    import json

    envelope = json.loads(raw.lindex(f"{prefix}raw", 0))
    raw.close()
    assert base64.b64decode(envelope["body"]) == b"\x00\xffbinary"
    assert envelope["properties"]["body_encoding"] == "base64"
