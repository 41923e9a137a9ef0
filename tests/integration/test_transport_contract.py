"""The Transport contract, one test body per behaviour, run on every transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from celeriac.messaging import Exchange, Message, Queue
from celeriac.messaging.entities import Binding
from celeriac.messaging.transports.base import QUARANTINE_QUEUE, ExchangeNotFound, Outgoing

T = TypeVar("T")
Opener = Callable[..., Any]
Names = Callable[[str], str]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def message(body: bytes, priority: int | None = None, **headers: Any) -> Message:
    properties: dict[str, Any] = {"correlation_id": body.decode()}
    if priority is not None:
        properties["priority"] = priority
    return Message(body, dict(headers), properties, "application/json", "utf-8")


async def send(transport: Any, queue: str, *bodies: bytes, not_before: float | None = None) -> None:
    await transport.publish([Outgoing(message(b), "", queue, not_before) for b in bodies])


async def fetch_n(transport: Any, queues: list[str], n: int) -> list[Message]:
    """Fetch until ``n`` messages arrived (several fetches may be needed), or fail."""
    got: list[Message] = []
    while len(got) < n:
        batch = await transport.fetch(queues, n - len(got), 1.0)
        assert batch, f"{queues}: {len(got)} of {n} arrived"
        got += batch
    return got


def test_publish_fetch_ack_round_trip(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            # Given a declared queue with three messages
            await t.declare_queue(Queue(q))
            await t.publish(
                [Outgoing(message(b"%d" % i, task="t.add", id=str(i)), q, q) for i in range(3)]
            )
            assert await t.queue_length(q) == 3
            # When they are fetched
            got = await t.fetch([q], 10, 1.0)
            # Then everything the producer set comes back, with delivery facts
            assert [m.body for m in got] == [b"0", b"1", b"2"]
            first = got[0]
            assert first.headers == {"task": "t.add", "id": "0"}
            assert first.properties["correlation_id"] == "0"
            assert (first.content_type, first.content_encoding) == ("application/json", "utf-8")
            assert first.delivery_info["queue"] == q
            assert first.delivery_info["exchange"] == q
            assert first.delivery_info["routing_key"] == q
            assert first.delivery_count == 1 and first.redelivered is False
            assert len({m.delivery_tag for m in got}) == 3
            # claimed messages are not waiting any more
            assert await t.queue_length(q) == 0
            # And once acked they are gone for good
            await t.ack(got)
            assert await t.fetch([q], 10, 0.05) == []

    run(main())


def test_reject_requeue_redelivers_and_reject_removes(
    open_transport: Opener, unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(q))
            await send(t, q, b"a", b"b")
            a, b = await t.fetch([q], 2, 1.0)
            # When one is rejected with requeue and the other without
            await t.reject([a], True)
            await t.reject([b], False)
            # Then only the requeued one comes back, marked as redelivered
            again = await t.fetch([q], 10, 0.3)
            assert [m.body for m in again] == [b"a"]
            assert again[0].redelivered is True and again[0].delivery_count == 2
            assert again[0].delivery_tag == a.delivery_tag
            await t.ack(again)
            assert await t.fetch([q], 10, 0.05) == []

    run(main())


def test_purge_removes_waiting_messages_only(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(q))
            await send(t, q, b"held", b"1", b"2")
            await send(t, q, b"later", not_before=time.time() + 60)
            (held,) = await t.fetch([q], 1, 1.0)
            # When the queue is purged
            assert await t.purge(q) == 3
            # Then ready and delayed messages are gone; the claimed one is still ours
            assert await t.queue_length(q) == 0
            await t.reject([held], True)
            assert await t.queue_length(q) == 1
            assert await t.purge(unique("never-declared")) == 0

    run(main())


def test_queue_length_counts_ready_and_delayed_not_claimed(
    open_transport: Opener, unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(q))
            assert await t.queue_length(q) == 0
            await send(t, q, b"1", b"2", b"3")
            await send(t, q, b"later", not_before=time.time() + 60)
            assert await t.queue_length(q) == 4
            await t.fetch([q], 2, 1.0)
            assert await t.queue_length(q) == 2

    run(main())


def test_expired_lease_redelivers_with_count(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport(visibility_timeout=0.3) as t:
            await t.declare_queue(Queue(q))
            await send(t, q, b"job")
            (first,) = await t.fetch([q], 1, 1.0)
            # When the holder neither acks nor extends
            again = await t.fetch([q], 1, 2.0)
            # Then the message comes back after the lease, counted
            assert [m.body for m in again] == [b"job"]
            assert again[0].redelivered is True
            assert again[0].delivery_count == 2
            assert again[0].delivery_tag == first.delivery_tag

    run(main())


def test_extend_keeps_the_lease(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport(visibility_timeout=0.3) as holder, open_transport(
            visibility_timeout=0.3
        ) as other:
            await holder.declare_queue(Queue(q))
            await send(holder, q, b"long")
            (held,) = await holder.fetch([q], 1, 1.0)

            async def keep_alive() -> None:
                for _ in range(6):
                    await asyncio.sleep(0.1)
                    await holder.extend([held])

            # When the holder extends while another consumer waits past the timeout
            _, stolen = await asyncio.gather(keep_alive(), other.fetch([q], 1, 0.7))
            # Then nobody else gets it, and the holder can still ack it
            assert stolen == []
            await holder.ack([held])
            await asyncio.sleep(0.4)
            assert await other.fetch([q], 1, 0.05) == []

    run(main())


def test_stale_receipt_cannot_settle_a_newer_claim(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport(visibility_timeout=0.3) as slow, open_transport(
            visibility_timeout=5
        ) as fresh:
            await slow.declare_queue(Queue(q))
            await send(slow, q, b"job")
            (old,) = await slow.fetch([q], 1, 1.0)
            await asyncio.sleep(0.4)
            (new,) = await fresh.fetch([q], 1, 1.0)
            # When the holder that lost its lease acks (or extends) late
            await slow.ack([old])
            await slow.extend([old], 60)
            # Then the newer claim is untouched: its holder can still return it
            await fresh.reject([new], True)
            assert await fresh.queue_length(q) == 1
            (third,) = await fresh.fetch([q], 1, 1.0)
            assert third.delivery_count == 3

    run(main())


def test_delayed_message_is_not_visible_before_not_before(
    open_transport: Opener, unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(q))
            # (a consumer serves the queue: on Redis the broker holds delayed messages
            # only then, otherwise the consumer honours the message's own eta)
            assert await t.fetch([q], 1, 0.01) == []
            not_before = time.time() + 0.4
            await send(t, q, b"later", not_before=not_before)
            await send(t, q, b"now")
            # The undelayed message is delivered, the delayed one is not yet
            got = await t.fetch([q], 10, 0.1)
            assert [m.body for m in got] == [b"now"]
            # A waiting fetch receives it once due, not before
            (later,) = await t.fetch([q], 10, 2.0)
            assert later.body == b"later"
            assert time.time() >= not_before

    run(main())


def test_higher_priority_first_then_fifo(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(q, max_priority=9))
            order = [(b"a", 0), (b"b", 5), (b"c", 1), (b"d", 9), (b"e", 5), (b"f", None)]
            await t.publish([Outgoing(message(b, p), "", q) for b, p in order])
            bodies = []
            for _ in order:
                (m,) = await t.fetch([q], 1, 1.0)
                bodies.append(m.body)
            if t.lower_priority_first:
                # kombu's Redis order, which Celery peers share: priority 0 is the most
                # urgent, and priorities share the list of their step (0, 3, 6, 9)
                assert bodies == [b"a", b"c", b"f", b"b", b"e", b"d"]
            else:
                assert bodies == [b"d", b"b", b"e", b"c", b"a", b"f"]

    run(main())


def test_direct_topic_and_fanout_routing(open_transport: Opener, unique: Names) -> None:
    direct, topic, fanout = unique("direct"), unique("topic"), unique("fanout")
    images, video, all_events, tasks_only, fan1, fan2 = (
        unique(n) for n in ("images", "video", "all", "tasks", "fan1", "fan2")
    )

    async def main() -> None:
        async with open_transport() as t:
            # Given queues bound to exchanges of each type
            await t.declare_queue(Queue(images, Exchange(direct), "images"))
            await t.declare_queue(Queue(video, Exchange(direct), "video"))
            await t.declare_queue(Queue(all_events, Exchange(topic, "topic"), "#"))
            await t.declare_queue(Queue(tasks_only, Exchange(topic, "topic"), "task.*"))
            await t.declare_queue(Queue(fan1, Exchange(fanout, "fanout")))
            await t.declare_queue(Queue(fan2, Exchange(fanout, "fanout")))
            # When messages are published through them
            await t.publish(
                [
                    Outgoing(message(b"img"), direct, "images"),
                    Outgoing(message(b"nobody"), direct, "audio"),
                    Outgoing(message(b"ts"), topic, "task.succeeded"),
                    Outgoing(message(b"wo"), topic, "worker.online"),
                    Outgoing(message(b"deep"), topic, "task.a.b"),
                    Outgoing(message(b"fan"), fanout, "ignored"),
                ]
            )
            # Then each lands where AMQP would route it; unroutable ones are dropped
            lengths = {n: await t.queue_length(n) for n in (images, video, all_events, tasks_only)}
            assert lengths == {images: 1, video: 0, all_events: 3, tasks_only: 1}
            assert await t.queue_length(fan1) == await t.queue_length(fan2) == 1
            (ts,) = await t.fetch([tasks_only], 5, 1.0)
            assert ts.body == b"ts" and ts.delivery_info["routing_key"] == "task.succeeded"
            assert ts.delivery_info["exchange"] == topic

    run(main())


def test_extra_bindings_and_undeclared_exchange(open_transport: Opener, unique: Names) -> None:
    ex, q, missing = unique("ex"), unique("q"), unique("missing")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_exchange(Exchange(ex, "topic"))
            await t.declare_queue(Queue(q, Exchange(""), bindings=(Binding(ex, "a.#", q),)))
            await t.publish([Outgoing(message(b"x"), ex, "a.b"), Outgoing(message(b"y"), "", q)])
            assert await t.queue_length(q) == 2
            # Publishing to an exchange nobody declared is a clear error, nothing is stored
            with pytest.raises(ExchangeNotFound, match=missing):
                await t.publish(
                    [Outgoing(message(b"z"), "", q), Outgoing(message(b"z"), missing, "k")]
                )
            assert await t.queue_length(q) == 2
            # The default exchange reaches a queue nobody declared (and creates it)
            fresh = unique("fresh")
            await t.publish([Outgoing(message(b"f"), "", fresh)])
            assert [m.body for m in await t.fetch([fresh], 1, 1.0)] == [b"f"]

    run(main())


def test_fair_rotation_does_not_starve_the_second_queue(
    open_transport: Opener, unique: Names
) -> None:
    a, b = unique("a"), unique("b")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(a))
            await t.declare_queue(Queue(b))
            await send(t, a, *[b"a%d" % i for i in range(20)])
            await send(t, b, *[b"b%d" % i for i in range(20)])
            # Single-message fetches alternate between the queues
            seen = [(await t.fetch([a, b], 1, 1.0))[0].delivery_info["queue"] for _ in range(4)]
            assert seen.count(a) == 2 and seen.count(b) == 2
            # Batches that one queue could fill alone still reach the other
            batches = [await t.fetch([a, b], 5, 1.0) for _ in range(2)]
            queues = {m.delivery_info["queue"] for batch in batches for m in batch}
            assert queues == {a, b}

    run(main())


def test_quarantine_keeps_body_and_reason(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.purge(QUARANTINE_QUEUE)
            await t.declare_queue(Queue(q))
            bad = Message(b"\xff\x00not json", {"task": "t.x", "id": "1"}, {}, "application/x-bad")
            await t.publish([Outgoing(bad, "", q)])
            (got,) = await t.fetch([q], 1, 1.0)
            # When it is quarantined
            await t.quarantine([got], "cannot decode body")
            # Then it left its queue and waits in the quarantine queue, bytes intact
            assert await t.queue_length(q) == 0
            (kept,) = await t.fetch([QUARANTINE_QUEUE], 1, 1.0)
            assert kept.body == b"\xff\x00not json"
            assert kept.content_type == "application/x-bad"
            assert kept.headers["task"] == "t.x"
            assert kept.headers["x-quarantine-reason"] == "cannot decode body"
            assert kept.headers["x-original-queue"] == q
            await t.ack([kept])

    run(main())


def test_fetch_wakes_on_publish_from_another_loop(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(q))

            def publish_elsewhere() -> None:
                async def publish() -> None:
                    async with open_transport() as other:
                        await send(other, q, b"cross")

                time.sleep(0.1)
                asyncio.run(publish())

            # A fetch waiting on this loop receives a publish made on another thread's loop
            thread_done = asyncio.get_running_loop().run_in_executor(None, publish_elsewhere)
            got = await t.fetch([q], 1, 5.0)
            await thread_done
            assert [m.body for m in got] == [b"cross"]

    run(main())


def test_bad_input_is_refused_with_a_clear_error(open_transport: Opener, unique: Names) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(q))
            with pytest.raises(TypeError, match="body must be bytes"):
                await t.publish([Outgoing(Message("text"), "", q)])  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="priority must be an integer"):
                await t.publish([Outgoing(message(b"x", "high"), "", q)])  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="not_before must be epoch seconds"):
                await t.publish([Outgoing(message(b"x"), "", q, "tomorrow")])  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="needs a routing key"):
                await t.publish([Outgoing(message(b"x"), "", "")])
            with pytest.raises(ValueError, match="limit"):
                await t.fetch([q], 0, 0.1)
            with pytest.raises(TypeError, match="sequence of queue names"):
                await t.fetch(q, 1, 0.1)
            assert await t.queue_length(q) == 0

    run(main())


def test_message_ttl_drops_messages_that_waited_too_long(
    open_transport: Opener, unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(q, message_ttl=0.2))
            await send(t, q, b"old1", b"old2")
            await asyncio.sleep(0.3)
            await send(t, q, b"fresh")
            got = await t.fetch([q], 10, 0.1)
            assert [m.body for m in got] == [b"fresh"]

    run(main())


def test_unused_expiring_queue_is_deleted_and_a_used_one_kept(
    open_transport: Opener, unique: Names
) -> None:
    ex, idle, busy = unique("ex"), unique("idle"), unique("busy")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(idle, Exchange(ex), "k", expires=0.3))
            await t.declare_queue(Queue(busy, Exchange(ex), "k", expires=0.3))
            await t.publish([Outgoing(message(b"x"), ex, "k")])
            # Given one queue that somebody keeps fetching from and one nobody reads
            for _ in range(10):
                await t.fetch([busy], 1, 0.1)
            # Then the unused one is gone with its bindings and messages
            assert await t.queue_length(idle) == 0
            await t.publish([Outgoing(message(b"y"), ex, "k")])
            assert await t.queue_length(idle) == 0
            assert await t.queue_length(busy) == 1

    run(main())


def test_a_large_batch_to_a_few_queues_arrives_whole_and_in_order(
    open_transport: Opener, unique: Names
) -> None:
    a, b = unique("a"), unique("b")

    async def main() -> None:
        async with open_transport() as t:
            await t.declare_queue(Queue(a))
            await t.declare_queue(Queue(b))
            # Given one batch of 1,200 messages, in runs to one queue then the other
            # (longer than a broker call takes at once, so it is split)
            where = [a if i % 100 < 70 else b for i in range(1200)]
            await t.publish(
                [Outgoing(message(b"%d" % i, id=str(i)), "", q) for i, q in enumerate(where)]
            )
            # Then each queue holds its messages, every one once, in publish order
            for q in (a, b):
                expected = [b"%d" % i for i, w in enumerate(where) if w == q]
                got = await fetch_n(t, [q], len(expected))
                assert [m.body for m in got] == expected
                assert {m.headers["id"] for m in got} == {e.decode() for e in expected}
                await t.ack(got)

    run(main())


def test_requeued_fanout_and_queued_messages_come_back(
    open_transport: Opener, unique: Names
) -> None:
    fanout, fan, plain = unique("fanout"), unique("fan"), unique("plain")

    async def main() -> None:
        async with open_transport() as t:
            # Given one fanout message and one queued message, fetched together
            await t.declare_queue(Queue(fan, Exchange(fanout, "fanout")))
            await t.declare_queue(Queue(plain))
            await t.publish(
                [Outgoing(message(b"fan"), fanout, "x"), Outgoing(message(b"plain"), "", plain)]
            )
            got = await fetch_n(t, [fan, plain], 2)
            assert sorted(m.body for m in got) == [b"fan", b"plain"]
            # When both are rejected with requeue (a warm shutdown gives messages back so)
            await t.reject(got, True)
            # Then both are delivered again, redelivered
            again = await fetch_n(t, [fan, plain], 2)
            assert sorted(m.body for m in again) == [b"fan", b"plain"]
            assert all(m.redelivered for m in again)
            await t.ack(again)

    run(main())
