"""Hand-offs: a publish that finds a fetch waiting on an empty queue claims the message for
it and sends it over pub/sub, recorded exactly as a claim, so nothing about delivery,
acks, restore or kombu peers changes, only the claim's round trip goes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest

from celeriac.messaging import Exchange, Message, Queue
from celeriac.messaging.transports.base import Outgoing

from .redis_servers import RedisServer

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")
from celeriac.messaging.transports.redis import HANDOFF_HOLD, RedisTransport  # noqa: E402

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def message(body: bytes) -> Message:
    return Message(body, {"id": body.decode()}, {}, "application/json", "utf-8")


def out(body: bytes, queue: str = "q") -> Outgoing:
    return Outgoing(message(body), "", queue)


@contextlib.asynccontextmanager
async def closing(*transports: Any) -> AsyncIterator[None]:
    """Close ``transports`` (or connections) however the block ends."""
    try:
        yield
    finally:
        for t in transports:
            await t.close()


@contextlib.asynccontextmanager
async def several(n: int, url: str, **options: Any) -> AsyncIterator[list[RedisTransport]]:
    """``n`` connected transports, closed however the block ends."""
    transports = [await opened(url, **options) for _ in range(n)]
    async with closing(*transports):
        yield transports


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
        async with several(2, url, global_keyprefix=prefix) as (worker, client):
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

    run(main())


def test_a_sync_push_that_may_hand_off_sleeps_for_its_reply(
    shared: tuple[str, str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, prefix, raw = shared
    from celeriac.messaging.transports import _redis_sync

    polls: list[float] = []
    poll_for = _redis_sync._Link.poll_for

    def counted(link: Any, seconds: float) -> bool:
        polls.append(seconds)
        return poll_for(link, seconds)

    monkeypatch.setattr(_redis_sync._Link, "poll_for", counted)

    async def main() -> None:
        async with several(2, url, global_keyprefix=prefix) as (worker, client):
            await client.declare_queue(Queue("q"))
            if client._sync is None or client._sync._spin == 0:
                pytest.skip("one CPU: replies are never polled for")
            # Given no worker waiting: a sync push polls for Redis's reply
            assert await asyncio.to_thread(client.publish_sync, [out(b"queued")])
            assert len(polls) == 1
            got = await worker.fetch(["q"], 10, 1.0)
            await worker.ack(got)
            # When a worker waits and the client has learned so (by a plain push)
            await waiting(worker)
            assert await asyncio.to_thread(client.publish_sync, [out(b"learns")])
            assert len(polls) == 2
            got = await worker.fetch(["q"], 10, 1.0)
            await worker.ack(got)
            await waiting(worker)
            # Then a push that hands its message to that worker sleeps for its reply: the
            # worker it wakes needs the CPU a poll would hold
            assert await asyncio.to_thread(client.publish_sync, [out(b"handed")])
            assert len(polls) == 2
            assert raw.llen(f"{prefix}q") == 0 and raw.hlen(f"{prefix}unacked") == 1
            (got,) = await worker.fetch(["q"], 10, 1.0)
            assert got.body == b"handed"
            await worker.ack([got])

    run(main())


def test_a_plain_queue_learns_that_offers_are_out(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        async with several(2, url, global_keyprefix=prefix) as (worker, client):
            # Given a queue declared plain (no TTL, no expiry) by the publishing process:
            # its pushes skip the scripts until one finds offers out
            await client.declare_queue(Queue("q"))
            await waiting(worker)
            for send in ("async", "sync", "async", "sync"):
                if send == "sync":
                    assert await asyncio.to_thread(client.publish_sync, [out(b"s")])
                else:
                    await client.publish([out(b"a")])
                got = await worker.fetch(["q"], 10, 1.0)
                await worker.ack(got)
                # (the worker's claim, having found the queue empty, offers again)
                assert await worker.fetch(["q"], 10, 0.01) == []
            assert raw.llen(f"{prefix}q") == 0
            # Then only the first push went to the queue (and learned of the offer): the
            # others were handed off, never rung and claimed
            stats = raw.info("commandstats")
            before = stats["cmdstat_lpush"]["calls"]
            await client.publish([out(b"last")])
            assert raw.info("commandstats")["cmdstat_lpush"]["calls"] == before
            assert raw.hlen(f"{prefix}unacked") == 1
            (got,) = await worker.fetch(["q"], 10, 1.0)
            await worker.ack([got])
            # And once no offer is out (the worker stopped fetching and its offer
            # lapsed), a push finds that out and the next one is plain again
            await asyncio.sleep(0.5)
            await client.publish([out(b"x")])
            await client.publish([out(b"y")])
            assert raw.llen(f"{prefix}q") == 2

    run(main())


def test_one_message_at_a_time_is_always_handed_off(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix, unacked_restore_interval=600)
        client = await opened(url, global_keyprefix=prefix)
        received: asyncio.Queue[Message] = asyncio.Queue()

        async def consume() -> None:  # as the worker's consumer: fetch again at once
            while True:
                for m in await worker.fetch(["q"], 100, 1.0):
                    received.put_nowait(m)

        await waiting(worker)
        consumer = asyncio.ensure_future(consume())
        try:
            # When more messages than one offer takes are published one at a time, each
            # after the one before was processed (delay().get() in a loop)
            for i in range(40):
                await client.publish([out(b"m%d" % i)])
                # Then every one was handed off: the fetch renewed its offer with the
                # last message of the one before, so none waited for a doorbell
                assert raw.llen(f"{prefix}q") == 0, i
                m = await asyncio.wait_for(received.get(), 5)
                assert m.body == b"m%d" % i
                await worker.ack([m])
        finally:
            consumer.cancel()
            await worker.close()
            await client.close()

    run(main())


def test_an_offer_takes_no_more_than_the_fetch_asked_for(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        async with several(2, url, global_keyprefix=prefix) as (worker, client):
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
            got = []
            while len(got) < 3:  # (hand-offs may come in more than one read)
                got += await worker.fetch(["q"], 3 - len(got), 1.0)
            assert [m.body for m in got] == [b"m0", b"m1", b"m2"]
            await worker.ack(got)
            got = await worker.fetch(["q"], 10, 1.0)
            assert [m.body for m in got] == [b"m3", b"m4"]
            await worker.ack(got)

    run(main())


def test_messages_already_waiting_go_first(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        async with several(3, url, global_keyprefix=prefix) as (worker, client, filler):
            await filler.declare_queue(Queue("q"))
            await waiting(worker)
            # Given messages pushed past the offer (two at once to a queue declared plain
            # here are pushed, not handed off)
            await filler.publish([out(b"first"), out(b"second")])
            # When one more is published while the offer is still out
            await client.publish([out(b"third")])
            # Then it queues behind them instead of overtaking them
            assert raw.llen(f"{prefix}q") == 3 and raw.hlen(f"{prefix}unacked") == 0
            got = await worker.fetch(["q"], 10, 1.0)
            assert [m.body for m in got] == [b"first", b"second", b"third"]
            await worker.ack(got)

    run(main())


def test_idle_workers_take_turns(shared: tuple[str, str, Any]) -> None:
    url, prefix, _ = shared

    async def main() -> None:
        async with several(3, url, global_keyprefix=prefix) as (one, two, client):
            await waiting(one)
            await waiting(two)
            for i in range(4):
                await client.publish([out(b"m%d" % i)])
            got_one: list[Message] = []
            got_two: list[Message] = []
            for _ in range(20):  # hand-offs come over two connections, in any order
                got_one += await one.fetch(["q"], 10, 0.05)
                got_two += await two.fetch(["q"], 10, 0.05)
                if len(got_one) + len(got_two) == 4:
                    break
            # Then each took every other message, not the first one all of them
            assert len(got_one) == 2 and len(got_two) == 2
            assert sorted(m.body for m in got_one + got_two) == [b"m0", b"m1", b"m2", b"m3"]
            await one.ack(got_one)
            await two.ack(got_two)

    run(main())


def test_handoffs_nobody_fetched_go_back(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        async with several(3, url, global_keyprefix=prefix) as (worker, client, other):
            # Given a worker that stops fetching while its offer is out (a cancelled queue)
            await waiting(worker)
            await client.publish([out(b"held")])
            assert raw.hlen(f"{prefix}unacked") == 1
            # Then after HANDOFF_HOLD seconds the message is back in the queue, and another
            # worker gets it (marked redelivered, as AMQP marks a prefetched message its
            # consumer gave back)
            await asyncio.sleep(HANDOFF_HOLD + 0.3)
            assert raw.llen(f"{prefix}q") == 1 and raw.hlen(f"{prefix}unacked") == 0
            (got,) = await other.fetch(["q"], 10, 1.0)
            assert got.body == b"held" and got.delivery_info["redelivered"] is True
            await other.ack([got])
            # (that fetch came back short, so it offers too; its worker then goes away,
            # and the next publish passes its offer by for the next one)
            await other.close()
            # Given another hand-off held when the worker closes
            await waiting(worker)
            await client.publish([out(b"at close")])
            assert raw.hlen(f"{prefix}unacked") == 1
            await worker.close()
            # Then it is back in the queue too
            assert raw.llen(f"{prefix}q") == 1 and raw.hlen(f"{prefix}unacked") == 0
            late = await opened(url, global_keyprefix=prefix)
            async with closing(late):
                (got,) = await late.fetch(["q"], 10, 1.0)
                assert got.body == b"at close"
                await late.ack([got])

    run(main())


def test_a_handoff_whose_holder_died_is_restored(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix, visibility_timeout=1)
        client = await opened(url, global_keyprefix=prefix)
        rescuer = await opened(url, global_keyprefix=prefix, visibility_timeout=1)
        async with closing(worker, client, rescuer):
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

    run(main())


def test_queues_with_ttl_or_expiry_get_no_offers(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        worker = await opened(url, global_keyprefix=prefix)
        async with closing(worker):
            await worker.declare_queue(Queue("ttl", message_ttl=30))
            await worker.declare_queue(Queue("expiring", expires=30))
            await worker.declare_queue(Queue("plain"))
            assert await worker.fetch(["ttl", "expiring", "plain"], 10, 0.01) == []
            # Their publishes keep the path that drops and expires messages
            assert raw.exists(f"{prefix}_celeriac.offers.ttl") == 0
            assert raw.exists(f"{prefix}_celeriac.offers.expiring") == 0
            assert raw.exists(f"{prefix}_celeriac.offers.plain") == 1

    run(main())


def test_a_handoff_to_a_vanished_worker_is_queued(private_redis: RedisServer) -> None:
    url = private_redis.url
    raw = redis.Redis.from_url(url)

    async def main() -> None:
        async with several(2, url) as (worker, client):
            await waiting(worker)
            # When the worker's pub/sub connection is gone (a killed worker) with its
            # offer still out, while a monitoring tool listens to every channel
            raw.client_kill_filter(_type="pubsub")
            watcher = raw.pubsub()
            watcher.psubscribe("*")
            watcher.get_message(timeout=1.0)
            # Then the publish finds nobody subscribed to the worker's channel and queues
            # the message, as if there had been no offer
            await client.publish([out(b"m")])
            watcher.close()
            assert raw.llen("q") == 1
            assert raw.hlen("unacked") == 0 and raw.zcard("unacked_index") == 0
            assert raw.exists("_celeriac.delivery.m") == 0
            assert raw.zcard("_celeriac.offers.q") == 0
            rescuer = await opened(url)
            (got,) = await rescuer.fetch(["q"], 10, 1.0)
            assert got.body == b"m" and got.delivery_info["redelivered"] is False
            await rescuer.ack([got])
            await rescuer.close()

    run(main())
    raw.close()


def test_handoffs_held_when_the_connection_broke_survive_the_reconnect(
    private_redis: RedisServer,
) -> None:
    url = private_redis.url
    raw = redis.Redis.from_url(url)

    async def main() -> None:
        async with several(2, url) as (worker, client):
            await waiting(worker)
            await client.publish([out(b"m")])
            await asyncio.sleep(0.05)  # the hand-off is in the worker's buffer
            # When the worker's pub/sub connection breaks, and the connection reconnects
            # as celeriac's Connection does it (close, then connect)
            raw.client_kill_filter(_type="pubsub")
            await asyncio.sleep(0.05)
            assert not worker.is_connected
            await worker.close()
            await worker.connect()
            # Then the message is not left to its lease: the next fetch has it
            (got,) = await worker.fetch(["q"], 10, 2.0)
            assert got.body == b"m"
            await worker.ack([got])
            assert raw.hlen("unacked") == 0 and raw.llen("q") == 0

    run(main())
    raw.close()


def test_a_message_routed_to_two_queues_keeps_both_copies(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        async with several(3, url, global_keyprefix=prefix) as (one, two, client):
            jobs = Exchange("jobs")
            await client.declare_queue(Queue("a", jobs, "k"))
            await client.declare_queue(Queue("b", jobs, "k"))
            await waiting(one, "a")
            await waiting(two, "b")
            # When one message (one delivery tag) is routed to both waiting queues
            await client.publish([Outgoing(message(b"both"), "jobs", "k")])
            # Then the copies do not share one claim record: the first is handed off, and
            # the second queued instead of overwriting its record; both are delivered
            # (the queues bound to the exchange come in the binding set's order)
            (tag,) = raw.hkeys(f"{prefix}unacked")
            handed = json.loads(raw.hget(f"{prefix}unacked", tag))[2]
            assert handed in ("a", "b")
            queued = "b" if handed == "a" else "a"
            assert raw.llen(f"{prefix}{queued}") == 1 and raw.llen(f"{prefix}{handed}") == 0
            got = await one.fetch(["a"], 10, 1.0) + await two.fetch(["b"], 10, 1.0)
            assert [m.body for m in got] == [b"both", b"both"]

    run(main())


def test_a_refused_handoff_channel_is_asked_for_once(private_redis: RedisServer) -> None:
    # Given a user who may listen to doorbells but not to hand-off channels
    url = private_redis.user_url("bells", channels=["_celeriac.ready/*"])
    raw = redis.Redis.from_url(private_redis.url)

    async def main() -> None:
        worker = await opened(url, polling_interval=0.01)
        async with closing(worker):
            for _ in range(10):
                assert await worker.fetch(["q"], 10, 0.02) == []

    run(main())
    # Then its fetches work as before, and only the first asked for the channel
    stats = raw.info("commandstats")["cmdstat_subscribe"]
    assert stats["rejected_calls"] == 1
    raw.close()


def test_a_forked_child_takes_handoffs_of_its_own(shared: tuple[str, str, Any]) -> None:
    url, prefix, _ = shared

    async def main() -> tuple[int, int]:
        t = await opened(url, global_keyprefix=prefix)
        await waiting(t)  # the parent offers
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a prefork child reconnecting the transport it inherited

            async def child() -> int:
                await t.connect()
                await waiting(t)  # the child offers too
                os.write(ready_w, b"r")
                await asyncio.to_thread(os.read, go_r, 1)
                return len(await t.fetch(["q"], 10, 0.5))

            os._exit(asyncio.run(child()))
        await asyncio.to_thread(os.read, ready_r, 1)
        client = await opened(url, global_keyprefix=prefix)
        # When two messages are published while both processes wait
        for body in (b"one", b"two"):
            await client.publish([out(body)])
        await client.close()
        os.write(go_w, b"g")
        got = await t.fetch(["q"], 10, 0.5)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        await t.close()
        return len(got), os.waitstatus_to_exitcode(status)

    # Then each message reached one process: the child did not listen on the parent's
    # hand-off channel or take over its offer
    parent, child = run(main())
    assert parent + child == 2


def test_a_publisher_refused_pubsub_still_publishes(private_redis: RedisServer) -> None:
    # Given a publisher whose ACL refuses PUBSUB (so it cannot see who listens)
    url = private_redis.user_url("producer", commands=["+@all", "-pubsub"])
    raw = redis.Redis.from_url(private_redis.url)

    async def main() -> None:
        worker = await opened(private_redis.url)
        client = await opened(url)
        async with closing(worker, client):
            await waiting(worker)
            # When it publishes while a worker waits
            await client.publish([out(b"m")])
            # Then the message is stored as if no worker waited, and the worker's offer
            # stays out
            assert raw.llen("q") == 1 and raw.hlen("unacked") == 0
            assert raw.zcard("_celeriac.offers.q") == 1
            (got,) = await worker.fetch(["q"], 10, 1.0)
            assert got.body == b"m"
            await worker.ack([got])

    run(main())
    raw.close()


_BUSY = """
local t0 = redis.call('TIME')
local start = tonumber(t0[1]) + tonumber(t0[2]) / 1e6
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) + tonumber(t[2]) / 1e6 - start > tonumber(ARGV[1]) then break end
end
return 1
"""


def test_a_return_that_timed_out_is_not_also_fetched(private_redis: RedisServer) -> None:
    url = private_redis.url

    def busy(seconds: float) -> None:
        stalled = redis.Redis.from_url(url)
        stalled.eval(_BUSY, 0, seconds)
        stalled.close()

    async def main() -> tuple[list[bytes], list[bytes]]:
        async with several(3, url) as (worker, client, other):
            await waiting(worker)
            await client.publish([out(b"warm")])  # loads the scripts a return runs
            (m,) = await worker.fetch(["q"], 10, 1.0)
            await worker.reject([m], requeue=True)
            (m,) = await worker.fetch(["q"], 10, 1.0)
            await worker.ack([m])
            # Given a hand-off nobody fetches, whose return Redis is too busy to answer
            # in time (it runs it later)
            await waiting(worker)
            await client.publish([out(b"m")])
            await asyncio.sleep(HANDOFF_HOLD - 0.1)
            stall = asyncio.ensure_future(asyncio.to_thread(busy, 1.5))
            await asyncio.sleep(1.8)
            await stall
            # Then the message is delivered once: back in the queue, not also to a fetch
            # of the worker that gave it back
            mine = await worker.fetch(["q"], 10, 0.2)
            theirs = await other.fetch(["q"], 10, 0.2)
            return [m.body for m in mine], [m.body for m in theirs]

    mine, theirs = run(main())
    assert sorted(mine + theirs) == [b"m"]


def test_a_reconnect_reads_the_handoffs_already_sent(private_redis: RedisServer) -> None:
    from celeriac.messaging.connection import Connection

    url = private_redis.url
    raw = redis.Redis.from_url(url)

    async def main() -> list[bytes]:
        conn = Connection(url)
        await conn.connect()
        worker = conn.transport
        client = await opened(url)
        async with closing(conn, client):
            await waiting(worker)
            # Given a hand-off sent (from sync code: this loop has not read it yet) when
            # the worker's script connection breaks (a reply slower than socket_timeout;
            # simulated), its pub/sub connection still fine
            assert client.publish_sync([out(b"m")])
            assert worker._link is not None
            worker._link.abort(ConnectionError("simulated: a reply timed out"))
            # When the next operation reconnects (connect(), without close())
            await conn.retrying(lambda t: t.queue_length("q"))
            # Then the hand-off was not dropped with the old connection
            got = await conn.retrying(lambda t: t.fetch(["q"], 10, 2.0))
            await conn.retrying(lambda t: t.ack(got))
            return [m.body for m in got]

    assert run(main()) == [b"m"]
    assert raw.hlen("unacked") == 0
    raw.close()


def test_large_messages_are_queued_not_handed_off(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        async with several(2, url, global_keyprefix=prefix) as (worker, client):
            await waiting(worker)
            # When a message over 64 KiB is published while the worker waits
            big = Message(b"x" * 70_000, {"id": "big"}, {}, "application/json", "utf-8")
            await client.publish([Outgoing(big, "", "q")])
            # Then it is queued (and rung), not sent down the worker's subscription
            assert raw.llen(f"{prefix}q") == 1 and raw.hlen(f"{prefix}unacked") == 0
            (got,) = await worker.fetch(["q"], 10, 1.0)
            assert len(got.body) == 70_000
            await worker.ack([got])

    run(main())


def test_a_refused_doorbell_does_not_fail_a_requeue(private_redis: RedisServer) -> None:
    # Given a worker whose ACL user may not publish (so no doorbell can be rung)
    url = private_redis.user_url("quiet", commands=["+@all", "-publish"])
    raw = redis.Redis.from_url(private_redis.url)

    async def main() -> None:
        async with several(1, url) as (worker,):
            await worker.publish([out(b"m")])
            (got,) = await worker.fetch(["q"], 10, 1.0)
            # When it gives the message back to an empty queue (whose doorbell it rings)
            await worker.reject([got], requeue=True)
            # Then the message is back, and its claim settled
            assert raw.llen("q") == 1 and raw.hlen("unacked") == 0

    run(main())
    raw.close()
