"""Hand-offs: a publish that finds a fetch waiting on an empty queue claims the message for
it and sends it over pub/sub, recorded exactly as a claim, so nothing about delivery,
acks, restore or kombu peers changes, only the claim's round trip goes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celeriac.messaging import Message, Queue
from celeriac.messaging.transports.base import Outgoing
from tests.redis_keys import delete_matching

from .conftest import require_transport
from .redis_servers import RedisServer

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")
from celeriac.messaging.transports.redis import HANDOFF_HOLD, RedisTransport  # noqa: E402

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def shared() -> Iterator[tuple[str, str, Any]]:
    """The shared Redis (db 15), a key prefix unique to this test, and a raw client."""
    require_transport("redis")
    prefix = f"h{uuid.uuid4().hex[:10]}:"
    raw = redis.Redis(host="127.0.0.1", port=6379, db=15)
    yield "redis://127.0.0.1:6379/15", prefix, raw
    delete_matching(raw, f"{prefix}*")
    raw.close()


def message(body: bytes) -> Message:
    return Message(body, {"id": body.decode()}, {}, "application/json", "utf-8")


def out(body: bytes, queue: str = "q") -> Outgoing:
    return Outgoing(message(body), "", queue)


async def opened(url: str, **options: Any) -> RedisTransport:
    transport = RedisTransport(url, options)
    await transport.connect()
    return transport


async def waiting(t: RedisTransport, queue: str = "q", limit: int = 10) -> None:
    """A fetch comes back empty: it leaves an offer on ``queue`` as an idle worker does."""
    assert await t.fetch([queue], limit, 0.01) == []


def test_a_waiting_fetch_gets_a_message_with_its_publish(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix)
        client = await opened(url, global_keyprefix=prefix)
        try:
            await client.declare_queue(Queue("q"))
            for body, send in ((b"async", client.publish), (b"sync", None)):
                await waiting(worker)
                # When a client publishes while the worker waits (async, then from sync code)
                if send is None:
                    assert await asyncio.to_thread(client.publish_sync, [out(body)])
                else:
                    await send([out(body)])
                # Then by the time the publish returns the message is claimed for the
                # worker, recorded as kombu records a claim, and the queue never held it
                assert raw.llen(f"{prefix}q") == 0
                (tag,) = raw.hkeys(f"{prefix}unacked")
                entry = json.loads(raw.hget(f"{prefix}unacked", tag))
                assert entry[0]["headers"]["id"] == body.decode() and entry[1:] == ["", "q"]
                assert raw.zscore(f"{prefix}unacked_index", tag) is not None
                # And the worker's fetch has it at once, as a first delivery
                started = time.monotonic()
                (got,) = await worker.fetch(["q"], 10, 5.0)
                assert time.monotonic() - started < 0.05
                assert got.body == body and got.delivery_info["redelivered"] is False
                await worker.ack([got])
                assert raw.hlen(f"{prefix}unacked") == 0
                assert raw.exists(f"{prefix}_celeriac.delivery.{tag.decode()}") == 0
        finally:
            await worker.close()
            await client.close()

    run(main())


def test_an_offer_takes_no_more_than_the_fetch_asked_for(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix)
        client = await opened(url, global_keyprefix=prefix)
        try:
            await client.declare_queue(Queue("q"))
            # Given a worker with room for 3 more messages, waiting
            await waiting(worker, limit=3)
            # When 5 are published one at a time
            for i in range(5):
                await client.publish([out(b"m%d" % i)])
            # Then 3 were handed to it and 2 wait in the queue, oldest first
            assert raw.hlen(f"{prefix}unacked") == 3
            assert [json.loads(e)["headers"]["id"] for e in raw.lrange(f"{prefix}q", 0, -1)] == [
                "m4",
                "m3",
            ]
            got = await worker.fetch(["q"], 3, 1.0)
            assert [m.body for m in got] == [b"m0", b"m1", b"m2"]
            await worker.ack(got)
            got = await worker.fetch(["q"], 10, 1.0)
            assert [m.body for m in got] == [b"m3", b"m4"]
            await worker.ack(got)
        finally:
            await worker.close()
            await client.close()

    run(main())


def test_messages_already_waiting_go_first(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix)
        client = await opened(url, global_keyprefix=prefix)
        try:
            await client.declare_queue(Queue("q"))
            await waiting(worker)
            # Given messages pushed past the offer (two at once are pushed, not handed off)
            await client.publish([out(b"first"), out(b"second")])
            # When one more is published while the offer is still out
            await client.publish([out(b"third")])
            # Then it queues behind them instead of overtaking them
            assert raw.llen(f"{prefix}q") == 3 and raw.hlen(f"{prefix}unacked") == 0
            got = await worker.fetch(["q"], 10, 1.0)
            assert [m.body for m in got] == [b"first", b"second", b"third"]
            await worker.ack(got)
        finally:
            await worker.close()
            await client.close()

    run(main())


def test_idle_workers_take_turns(shared: tuple[str, str, Any]) -> None:
    url, prefix, _ = shared

    async def main() -> None:
        one = await opened(url, global_keyprefix=prefix)
        two = await opened(url, global_keyprefix=prefix)
        client = await opened(url, global_keyprefix=prefix)
        try:
            await client.declare_queue(Queue("q"))
            await waiting(one)
            await waiting(two)
            for i in range(4):
                await client.publish([out(b"m%d" % i)])
            got_one = await one.fetch(["q"], 10, 1.0)
            got_two = await two.fetch(["q"], 10, 1.0)
            # Then each took every other message, not the first one all of them
            assert len(got_one) == 2 and len(got_two) == 2
            assert sorted(m.body for m in got_one + got_two) == [b"m0", b"m1", b"m2", b"m3"]
            await one.ack(got_one)
            await two.ack(got_two)
        finally:
            for t in (one, two, client):
                await t.close()

    run(main())


def test_handoffs_nobody_fetched_go_back_uncounted(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix)
        client = await opened(url, global_keyprefix=prefix)
        other = await opened(url, global_keyprefix=prefix)
        try:
            await client.declare_queue(Queue("q"))
            # Given a worker that stops fetching while its offer is out (a cancelled queue)
            await waiting(worker)
            await client.publish([out(b"held")])
            assert raw.hlen(f"{prefix}unacked") == 1
            # Then after HANDOFF_HOLD seconds the message is back in the queue, and another
            # worker gets it as a first delivery (the application never saw it)
            await asyncio.sleep(HANDOFF_HOLD + 0.3)
            assert raw.llen(f"{prefix}q") == 1 and raw.hlen(f"{prefix}unacked") == 0
            (got,) = await other.fetch(["q"], 10, 1.0)
            assert got.body == b"held" and got.delivery_info["redelivered"] is False
            await other.ack([got])
            # (that fetch came back short, so it offers too; its worker then goes away,
            # and the next publish passes its offer by for the next one)
            await other.close()
            # Given another hand-off held when the worker closes
            await waiting(worker)
            await client.publish([out(b"at close")])
            assert raw.hlen(f"{prefix}unacked") == 1
            await worker.close()
            # Then it is back in the queue too, uncounted
            assert raw.llen(f"{prefix}q") == 1 and raw.hlen(f"{prefix}unacked") == 0
            other = await opened(url, global_keyprefix=prefix)
            (got,) = await other.fetch(["q"], 10, 1.0)
            assert got.body == b"at close" and got.delivery_info["redelivered"] is False
            await other.ack([got])
        finally:
            for t in (worker, client, other):
                await t.close()

    run(main())


def test_a_handoff_whose_holder_died_is_restored(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix, visibility_timeout=1)
        client = await opened(url, global_keyprefix=prefix)
        rescuer = await opened(url, global_keyprefix=prefix, visibility_timeout=1)
        try:
            await client.declare_queue(Queue("q"))
            await waiting(worker)
            await client.publish([out(b"lost")])
            (got,) = await worker.fetch(["q"], 10, 1.0)
            # When its holder stalls past its lease without acking
            await asyncio.sleep(1.2)
            # Then it is restored like any claim, and delivered again as a redelivery
            assert await rescuer.restore_unacked() == 1
            (again,) = await rescuer.fetch(["q"], 10, 1.0)
            assert again.body == b"lost" and again.delivery_info["redelivered"] is True
            # And the first holder's late ack cannot settle the new claim
            await worker.ack([got])
            assert raw.hlen(f"{prefix}unacked") == 1
            await rescuer.ack([again])
            assert raw.hlen(f"{prefix}unacked") == 0
        finally:
            for t in (worker, client, rescuer):
                await t.close()

    run(main())


def test_queues_with_ttl_or_expiry_get_no_offers(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix)
        try:
            await worker.declare_queue(Queue("ttl", message_ttl=30))
            await worker.declare_queue(Queue("expiring", expires=30))
            await worker.declare_queue(Queue("plain"))
            assert await worker.fetch(["ttl", "expiring", "plain"], 10, 0.01) == []
            # Their publishes keep the path that drops and expires messages
            assert raw.exists(f"{prefix}_celeriac.offers.ttl") == 0
            assert raw.exists(f"{prefix}_celeriac.offers.expiring") == 0
            assert raw.exists(f"{prefix}_celeriac.offers.plain") == 1
        finally:
            await worker.close()

    run(main())


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_a_handoff_to_a_vanished_worker_is_queued(private_redis: RedisServer) -> None:
    url = private_redis.url
    raw = redis.Redis.from_url(url)

    async def main() -> None:
        worker = await opened(url)
        client = await opened(url)
        try:
            await client.declare_queue(Queue("q"))
            await waiting(worker)
            # When the worker's pub/sub connection is gone (a killed worker) with its
            # offer still out
            raw.client_kill_filter(_type="pubsub")
            # Then the publish finds no receiver, takes its claim back and queues the
            # message, as if there had been no offer
            await client.publish([out(b"m")])
            assert raw.llen("q") == 1
            assert raw.hlen("unacked") == 0 and raw.zcard("unacked_index") == 0
            assert raw.exists("_celeriac.delivery.m") == 0
            assert raw.zcard("_celeriac.offers.q") == 0
            rescuer = await opened(url)
            (got,) = await rescuer.fetch(["q"], 10, 1.0)
            assert got.body == b"m" and got.delivery_info["redelivered"] is False
            await rescuer.ack([got])
            await rescuer.close()
        finally:
            await worker.close()
            await client.close()

    run(main())
    raw.close()
