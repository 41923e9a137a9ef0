"""Connection, Producer and Consumer on every transport: retries, batching, leases."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celeriac.exceptions import BrokerConnectionError, ConnectionBrokenError
from celeriac.messaging import (
    QUARANTINE_QUEUE,
    Connection,
    Consumer,
    Exchange,
    Message,
    Producer,
    Queue,
)
from celeriac.messaging.transports.base import Outgoing

T = TypeVar("T")
Names = Callable[[str], str]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition``; fail the test if it does not hold within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def fail_once(obj: Any, name: str) -> list[int]:
    """Make ``obj.name`` raise ConnectionBrokenError on its next call only."""
    original = getattr(obj, name)
    calls: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionBrokenError("injected: connection reset")
        return await original(*args, **kwargs)

    setattr(obj, name, flaky)
    return calls


def count_calls(obj: Any, name: str) -> list[int]:
    """Record every call to ``obj.name``: its batch size, or 1 for a single argument."""
    original = getattr(obj, name)
    sizes: list[int] = []

    async def counted(batch: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(batch) if isinstance(batch, list | tuple) else 1)
        return await original(batch, *args, **kwargs)

    setattr(obj, name, counted)
    return sizes


def connection(url: str, options: dict[str, Any], **extra: Any) -> Connection:
    return Connection(url, transport_options={**options, **extra}, interval_start=0.01)


async def publish(conn: Connection, queue: str, count: int) -> None:
    await Producer(conn).publish_many(
        [Outgoing(Message(b"%d" % i), "", queue) for i in range(count)]
    )


def test_unreachable_sqlite_gives_broker_connection_error_quickly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'broker.db'}"

    async def main() -> None:
        conn = Connection(url, max_retries=2, interval_start=0.01, interval_step=0.0)
        with pytest.raises(BrokerConnectionError) as info:
            await conn.connect()
        assert str(info.value).startswith(f"cannot connect to {url}: ")
        assert "unable to open database file" in str(info.value)
        assert isinstance(info.value.__cause__, ConnectionBrokenError)
        assert not conn.is_connected

    run(main())


def test_password_is_masked_in_uri_and_repr() -> None:
    conn = Connection("memory://user:s3cret@somewhere")
    assert conn.as_uri() == "memory://user:**@somewhere"
    assert conn.as_uri(mask=False) == "memory://user:s3cret@somewhere"
    assert "s3cret" not in repr(conn) and "s3cret" not in repr(conn.transport)


def test_broken_operation_reconnects_redeclares_and_retries(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    ex, q = unique("ex"), unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.declare(Queue(q, Exchange(ex, "topic"), "jobs.#"))
            hooks: list[str] = []
            conn.on_reconnect.append(lambda: hooks.append("sync"))

            async def async_hook() -> None:
                hooks.append("async")

            conn.on_reconnect.append(async_hook)
            before = conn.generation
            calls = fail_once(conn.transport, "publish")
            # When the broker connection breaks during a publish
            await Producer(conn).publish(Message(b"x"), ex, "jobs.a")
            # Then it reconnected, ran the hooks, and the publish went through once retried
            assert len(calls) == 2
            assert hooks == ["sync", "async"]
            assert conn.generation == before + 1
            assert await conn.transport.queue_length(q) == 1

    run(main())


def test_a_publish_sent_again_after_a_lost_reply_gives_the_copy_its_own_tag(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    # Brokers key unacked records by delivery tag: two copies sharing one would share
    # their record, and acking one could settle (or refuse) the other.
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.declare(Queue(q))
            original = conn.transport.publish
            calls: list[int] = []

            async def stored_then_broken(batch: Any) -> None:
                await original(batch)
                calls.append(1)
                if len(calls) == 1:  # stored, but the reply never came back
                    raise ConnectionBrokenError("injected: reply lost")

            conn.transport.publish = stored_then_broken  # type: ignore[method-assign]
            message = Message(b"1", delivery_tag="fixed-tag")
            await Producer(conn).publish_many([Outgoing(message, "", q)])
            got = await conn.transport.fetch([q], 10, 1.0)
            assert len(got) == 2  # at least once: the copy is there too
            assert len({m.delivery_tag for m in got}) == 2

    run(main())


def test_producer_declares_each_queue_once_per_connection(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    ex, q = unique("ex"), unique("q")
    queue = Queue(q, Exchange(ex), "k")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            declared = count_calls(conn.transport, "declare_queue")
            producer = Producer(conn)
            for i in range(3):
                await producer.publish(Message(b"%d" % i), ex, "k", declare=(queue,))
            assert len(declared) == 1
            assert await conn.transport.queue_length(q) == 3

    run(main())


def test_consumer_settles_in_few_batched_calls(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.declare(Queue(q))
            await publish(conn, q, 250)
            acks = count_calls(conn.transport, "ack")
            fetches: list[int] = []
            seen: list[bytes] = []

            def on_message(message: Message) -> None:
                seen.append(message.body)
                message.ack()

            consumer = Consumer(conn, [Queue(q)], on_message, fetch_timeout=0.2)
            original_fetch = conn.transport.fetch

            async def counted_fetch(*args: Any) -> list[Message]:
                got = await original_fetch(*args)
                fetches.append(len(got))
                return got

            conn.transport.fetch = counted_fetch  # type: ignore[method-assign]
            task = asyncio.create_task(consumer.run())
            await until(lambda: sum(acks) == 250)
            consumer.stop()
            await task
            # Every message was handled once, claimed and acked in batches
            assert sorted(seen) == sorted(b"%d" % i for i in range(250))
            assert len(acks) <= 10
            assert max(fetches) == 100
            assert await conn.transport.queue_length(q) == 0
            assert await conn.transport.fetch([q], 1, 0.05) == []

    run(main())


def test_settlements_go_one_call_at_a_time_while_the_broker_is_slow(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    # A call per loop iteration, each on a connection of its own while the broker is
    # slow to answer, grew a Redis worker's connection pool to its limit under load.
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.declare(Queue(q))
            await publish(conn, q, 600)
            original_ack = conn.transport.ack
            in_flight: list[int] = [0]
            most: list[int] = [0]
            acked: list[int] = []

            async def slow_ack(messages: Any) -> None:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
                try:
                    await asyncio.sleep(0.03)  # a broker slower than the loop
                    await original_ack(messages)
                    acked.append(len(messages))
                finally:
                    in_flight[0] -= 1

            conn.transport.ack = slow_ack  # type: ignore[method-assign]
            consumer = Consumer(
                conn, [Queue(q)], lambda m: m.ack(), prefetch_count=50, fetch_timeout=0.2
            )
            task = asyncio.create_task(consumer.run())
            await until(lambda: sum(acked) == 600)
            consumer.stop()
            await task
            # Then every message was acked once, never two calls at once, and what piled
            # up during a call went out together in the next
            assert sum(acked) == 600 and most[0] == 1
            assert len(acked) < 600 / 50
            assert await conn.transport.queue_length(q) == 0

    run(main())


class _Headers(dict):  # type: ignore[type-arg]
    """A plain dict that can be watched with a weak reference."""


@pytest.mark.parametrize("settle", ["ack", "reject", "requeue"])
def test_a_settled_message_waiting_for_its_broker_call_lets_its_parsed_content_go(
    transport_url: str, base_options: dict[str, Any], unique: Names, settle: str
) -> None:
    # Settlements wait in batches for one broker call at a time; holding whole messages
    # there kept about as many messages' headers alive as the worker held unsettled.
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.declare(Queue(q))
            await publish(conn, q, 40)
            watched: list[weakref.ref[_Headers]] = []
            alive_during_calls: list[int] = []
            settled: list[int] = []

            def slowed(name: str) -> None:
                original = getattr(conn.transport, name)

                async def slow(messages: Any, *args: Any) -> None:
                    await asyncio.sleep(0.02)  # a broker slower than the loop
                    gc.collect()
                    alive_during_calls.append(sum(1 for ref in watched if ref() is not None))
                    await original(messages, *args)
                    settled.append(len(messages))

                setattr(conn.transport, name, slow)

            slowed("ack")
            slowed("reject")
            bodies: list[bytes] = []

            def on_message(message: Message) -> None:
                bodies.append(message.body)
                if message.redelivered or message.delivery_count > 1:
                    message.ack()  # a requeued one, back again
                    return
                message.headers = _Headers(message.headers, payload="x" * 1000)
                watched.append(weakref.ref(message.headers))
                if settle == "ack":
                    message.ack()
                else:
                    message.reject(requeue=settle == "requeue")

            consumer = Consumer(conn, [Queue(q)], on_message, prefetch_count=10)
            task = asyncio.create_task(consumer.run())
            await until(lambda: sum(settled) == (80 if settle == "requeue" else 40))
            consumer.stop()
            await task
            # Then no settled message's headers were alive while its settlement was on its
            # way, and every settlement still reached the broker: acked and rejected
            # messages are gone, requeued ones came back once each
            assert len(watched) == 40
            assert alive_during_calls and max(alive_during_calls) == 0
            expected = 2 if settle == "requeue" else 1
            assert sorted(bodies) == sorted(b"%d" % i for i in range(40) for _ in range(expected))
            assert await conn.transport.queue_length(q) == 0
            assert await conn.transport.fetch([q], 1, 0.05) == []

    run(main())


def test_consumer_respects_prefetch_and_its_runtime_changes(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.declare(Queue(q))
            await publish(conn, q, 30)
            held: list[Message] = []
            consumer = Consumer(
                conn, [Queue(q)], held.append, prefetch_count=10, fetch_timeout=0.2
            )
            task = asyncio.create_task(consumer.run())
            await until(lambda: len(held) == 10)
            await asyncio.sleep(0.2)
            # Holding 10 unsettled, it claims no more
            assert consumer.unsettled == 10 and len(held) == 10
            assert await conn.transport.queue_length(q) == 20
            # Raising the limit at runtime lets it take more at once
            consumer.prefetch_count = 25
            await until(lambda: len(held) == 25)
            # Settling frees capacity for the rest
            for message in held[:5]:
                message.ack()
            await until(lambda: len(held) == 30)
            assert consumer.unsettled == 25
            for message in held[5:]:
                message.ack()
            await consumer.flush()
            assert consumer.unsettled == 0
            consumer.stop()
            await task
            assert await conn.transport.fetch([q], 1, 0.05) == []

    run(main())


def test_consumer_keeps_leases_of_held_messages(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options, visibility_timeout=0.3) as conn:
            await conn.declare(Queue(q))
            await publish(conn, q, 1)
            held: list[Message] = []
            consumer = Consumer(conn, [Queue(q)], held.append, fetch_timeout=0.2)
            task = asyncio.create_task(consumer.run())
            await until(lambda: len(held) == 1)
            # While the consumer holds it for three visibility timeouts, nobody gets it
            async with connection(transport_url, base_options, visibility_timeout=0.3) as other:
                assert await other.transport.fetch([q], 1, 0.9) == []
                held[0].ack()
                await consumer.flush()
                await asyncio.sleep(0.35)
                assert await other.transport.fetch([q], 1, 0.05) == []
            consumer.stop()
            await task
            assert held[0].delivery_count == 1

    run(main())


def test_consumer_close_returns_unsettled_messages(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.declare(Queue(q))
            await publish(conn, q, 5)
            held: list[Message] = []
            consumer = Consumer(conn, [Queue(q)], held.append, fetch_timeout=0.2)
            task = asyncio.create_task(consumer.run())
            await until(lambda: len(held) == 5)
            held[0].ack()
            # When the consumer closes holding four unsettled messages
            await consumer.close()
            await asyncio.wait_for(task, 2.0)
            # Then those four are back in the queue at once, marked redelivered
            assert await conn.transport.queue_length(q) == 4
            again = await conn.transport.fetch([q], 10, 1.0)
            assert sorted(m.body for m in again) == sorted(m.body for m in held[1:])
            assert all(m.redelivered for m in again)

    run(main())


def test_consumer_survives_a_broken_fetch_and_requeue_redelivers(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.declare(Queue(q))
            await publish(conn, q, 1)
            reconnects: list[int] = []
            conn.on_reconnect.append(lambda: reconnects.append(1))
            calls = fail_once(conn.transport, "fetch")
            deliveries: list[Message] = []

            def on_message(message: Message) -> None:
                deliveries.append(message)
                if message.delivery_count == 1:
                    message.requeue()
                else:
                    message.ack()

            consumer = Consumer(conn, [Queue(q)], on_message, fetch_timeout=0.2)
            task = asyncio.create_task(consumer.run())
            await until(lambda: len(deliveries) == 2)
            await consumer.close()
            await task
            assert len(calls) >= 2 and reconnects == [1]
            assert [m.delivery_count for m in deliveries] == [1, 2]
            assert deliveries[1].redelivered
            assert await conn.transport.fetch([q], 1, 0.05) == []

    run(main())


def test_failing_callback_quarantines_the_message(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    q = unique("q")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            await conn.transport.purge(QUARANTINE_QUEUE)
            await conn.declare(Queue(q))
            await publish(conn, q, 1)

            def on_message(message: Message) -> None:
                raise RuntimeError("handler bug")

            consumer = Consumer(conn, [Queue(q)], on_message, fetch_timeout=0.2)
            task = asyncio.create_task(consumer.run())
            got = await conn.transport.fetch([QUARANTINE_QUEUE], 1, 3.0)
            consumer.stop()
            await task
            assert [m.body for m in got] == [b"0"]
            assert "handler bug" in got[0].headers["x-quarantine-reason"]
            assert consumer.unsettled == 0
            assert await conn.transport.queue_length(q) == 0

    run(main())


def test_consumer_add_and_cancel_queue(
    transport_url: str, base_options: dict[str, Any], unique: Names
) -> None:
    a, b = unique("a"), unique("b")

    async def main() -> None:
        async with connection(transport_url, base_options) as conn:
            seen: list[str] = []

            def on_message(message: Message) -> None:
                seen.append(message.delivery_info["queue"])
                message.ack()

            consumer = Consumer(conn, [Queue(a)], on_message, fetch_timeout=0.1)
            task = asyncio.create_task(consumer.run())
            await consumer.add_queue(Queue(b))
            await publish(conn, b, 1)
            await until(lambda: seen == [b])
            consumer.cancel_queue(b)
            await asyncio.sleep(0.15)  # let a fetch already waiting on b time out
            await publish(conn, b, 1)
            await publish(conn, a, 1)
            await until(lambda: seen == [b, a])
            assert await conn.transport.queue_length(b) == 1
            consumer.stop()
            await task

    run(main())


def test_bad_arguments_are_refused(transport_url: str, base_options: dict[str, Any]) -> None:
    conn = connection(transport_url, base_options)
    with pytest.raises(ValueError, match="prefetch_count"):
        Consumer(conn, [], lambda m: None, prefetch_count=0)
    with pytest.raises(ValueError, match="max_retries"):
        Connection(transport_url, max_retries=-1)

    async def main() -> None:
        async with conn:
            with pytest.raises(TypeError, match="Message"):
                await Producer(conn).publish(b"raw bytes", "", "q")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="Queue and Exchange"):
                await conn.declare("q")  # type: ignore[arg-type]

    run(main())
