"""What only the Redis transport promises: kombu's keys, credentials, databases, unix
sockets, Sentinel, delayed messages kept in Redis, and surviving a Redis restart."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celeriac.exceptions import ConfigurationError, ConnectionBrokenError
from celeriac.messaging import Connection, Consumer, Exchange, Message, Queue
from celeriac.messaging.transports.base import Outgoing

from .conftest import fetch_polls_past_refused_doorbells
from .redis_servers import RedisServer, SentinelServer, TlsRedisServer

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")
from celeriac.messaging.transports.redis import RedisTransport  # noqa: E402

T = TypeVar("T")
SEP = "\x06\x16"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def message(body: bytes, **properties: Any) -> Message:
    return Message(body, {"id": body.decode()}, dict(properties), "application/json", "utf-8")


async def opened(url: str, **options: Any) -> RedisTransport:
    transport = RedisTransport(url, options)
    await transport.connect()
    return transport


def test_keys_and_entries_are_kombus(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        t = await opened(url, global_keyprefix=prefix)
        try:
            await t.declare_queue(Queue("jobs", Exchange("jobs"), "jobs"))
            await t.publish(
                [
                    Outgoing(message(b"1"), "jobs", "jobs"),
                    Outgoing(message(b"2", priority=5), "jobs", "jobs"),
                ]
            )
            # Lists and the binding are where a Celery peer looks for them
            assert raw.llen(f"{prefix}jobs") == 1
            assert raw.llen(f"{prefix}jobs{SEP}3") == 1
            members = raw.smembers(f"{prefix}_kombu.binding.jobs")
            assert members == {f"jobs{SEP}{SEP}jobs".encode()}
            envelope = json.loads(raw.lindex(f"{prefix}jobs", 0))
            assert envelope["properties"]["body_encoding"] == "base64"
            assert envelope["properties"]["delivery_info"] == {
                "exchange": "jobs",
                "routing_key": "jobs",
            }
            assert envelope["content-type"] == "application/json"
            # A claim is recorded as kombu records it: [envelope, exchange, routing key]
            (got,) = await t.fetch(["jobs"], 1, 1.0)
            tag = got.delivery_tag
            entry = json.loads(raw.hget(f"{prefix}unacked", tag))
            assert entry[0]["properties"]["delivery_tag"] == tag and entry[2] == "jobs"
            assert raw.zscore(f"{prefix}unacked_index", tag) is not None
            await t.ack([got])
            assert raw.hget(f"{prefix}unacked", tag) is None
            assert raw.zscore(f"{prefix}unacked_index", tag) is None
        finally:
            await t.close()

    run(main())


def test_delayed_messages_wait_in_redis_not_in_memory(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        t = await opened(url, global_keyprefix=prefix)
        assert await t.fetch(["q"], 1, 0.01) == []  # a celeriac consumer serves "q"
        await t.publish([Outgoing(message(b"later"), "", "q", time.time() + 0.5)])
        await t.close()
        # Given no process holds it, the message is in Redis's delayed set
        assert raw.zcard(f"{prefix}_celeriac.delayed.q") == 1
        assert raw.llen(f"{prefix}q") == 0
        # Then a transport that starts later receives it once due
        t = await opened(url, global_keyprefix=prefix)
        try:
            assert await t.fetch(["q"], 1, 0.1) == []
            (got,) = await t.fetch(["q"], 1, 2.0)
            assert got.body == b"later"
        finally:
            await t.close()

    run(main())


def test_delayed_message_for_a_queue_no_celeriac_consumer_serves_goes_there_at_once(
    shared: tuple[str, str, Any],
) -> None:
    url, prefix, raw = shared

    async def main() -> None:
        t = await opened(url, global_keyprefix=prefix)
        try:
            # Given a queue only Celery workers consume (no celeriac fetch marked it)
            await t.publish([Outgoing(message(b"eta"), "", "celery-only", time.time() + 60)])
            # Then the message waits in the queue itself, where a Celery worker finds it
            # and holds it until the eta in its headers, as Celery does
            assert raw.llen(f"{prefix}celery-only") == 1
            assert raw.zcard(f"{prefix}_celeriac.delayed.celery-only") == 0
            # And once a celeriac consumer serves a queue, delayed messages wait in Redis
            assert await t.fetch(["served"], 1, 0.01) == []
            await t.publish([Outgoing(message(b"eta"), "", "served", time.time() + 60)])
            assert raw.zcard(f"{prefix}_celeriac.delayed.served") == 1
            assert raw.llen(f"{prefix}served") == 0
        finally:
            await t.close()

    run(main())


def test_served_mark_lasts_past_its_renewals_and_returns_after_a_reconnect(
    shared: tuple[str, str, Any],
) -> None:
    url, prefix, raw = shared
    from celeriac.messaging.transports import _redis_scripts as scripts

    mark = f"{prefix}_celeriac.consumers.q"

    async def main() -> None:
        t = await opened(url, global_keyprefix=prefix)
        try:
            assert await t.fetch(["q"], 1, 0.01) == []
            # The mark outlives the time between renewals with room to spare
            ttl = raw.ttl(mark)
            assert scripts.PRESENCE_REFRESH * 2 < ttl <= scripts.PRESENCE_SECONDS
            # When the mark is lost (Redis restarted empty), the reconnect renews it
            raw.delete(mark)
            await t.close()
            await t.connect()
            assert await t.fetch(["q"], 1, 0.01) == []
            assert raw.exists(mark)
        finally:
            await t.close()

    run(main())


def test_acl_user_and_password(shared: tuple[str, str, Any]) -> None:
    _, prefix, raw = shared
    user, password = f"u{uuid.uuid4().hex[:8]}", "s3cret-pw"
    raw.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip

    async def main() -> None:
        good = f"redis://{user}:{password}@127.0.0.1:6379/15"
        t = await opened(good, global_keyprefix=prefix)
        try:
            await t.publish([Outgoing(message(b"x"), "", "q")])
            assert [m.body for m in await t.fetch(["q"], 1, 1.0)] == [b"x"]
            assert password not in repr(t)
        finally:
            await t.close()
        bad = RedisTransport(f"redis://{user}:wrong@127.0.0.1:6379/15", {})
        with pytest.raises(ConfigurationError, match="refused the credentials") as info:
            await bad.connect()
        assert "wrong" not in str(info.value)

    try:
        run(main())
    finally:
        raw.acl_deluser(user)


def test_database_numbers_keep_queues_apart(shared: tuple[str, str, Any]) -> None:
    _, prefix, _ = shared

    async def main() -> None:
        a = await opened("redis://127.0.0.1:6379/15", global_keyprefix=prefix)
        b = await opened("redis://127.0.0.1:6379/14", global_keyprefix=prefix)
        try:
            await a.publish([Outgoing(message(b"in15"), "", "q")])
            assert await b.queue_length("q") == 0
            assert await a.queue_length("q") == 1
            assert await a.purge("q") == 1
        finally:
            await a.close()
            await b.close()

    run(main())


def test_unknown_option_and_bad_values_are_named() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'visibility_timeout'"):
        RedisTransport("redis://127.0.0.1:6379/0", {"visibilty_timeout": 10})
    with pytest.raises(ConfigurationError, match="priority_steps"):
        RedisTransport("redis://127.0.0.1:6379/0", {"priority_steps": [3, 1]})
    with pytest.raises(ConfigurationError, match="master_name"):
        RedisTransport("sentinel://127.0.0.1:26379", {})
    with pytest.raises(ConfigurationError, match="must be a number"):
        RedisTransport("redis://127.0.0.1:6379/zero", {})


def test_unreachable_redis_is_a_broken_connection() -> None:
    async def main() -> None:
        port = 1  # nothing listens there
        t = RedisTransport(f"redis://127.0.0.1:{port}/0", {"socket_connect_timeout": 0.5})
        with pytest.raises(ConnectionBrokenError, match=f"127.0.0.1:{port}"):
            await t.connect()

    run(main())


def test_unix_socket_url(private_redis: RedisServer) -> None:
    async def main() -> None:
        t = await opened(f"unix://{private_redis.socket_path}?db=2")
        try:
            await t.publish([Outgoing(message(b"sock"), "", "q")])
            assert [m.body for m in await t.fetch(["q"], 1, 1.0)] == [b"sock"]
        finally:
            await t.close()

    run(main())


def test_rediss_url_verifies_the_server_certificate(tmp_path: Path) -> None:
    server = TlsRedisServer(tmp_path).start()
    try:

        async def main() -> None:
            base = f"rediss://127.0.0.1:{server.port}/0"
            t = await opened(f"{base}?ssl_cert_reqs=required&ssl_ca_certs={server.ca}")
            try:
                await t.publish([Outgoing(message(b"tls"), "", "q")])
                assert [m.body for m in await t.fetch(["q"], 1, 1.0)] == [b"tls"]
            finally:
                await t.close()
            # A server certificate nobody vouched for is refused, not trusted silently
            untrusted = RedisTransport(f"{base}?ssl_cert_reqs=required", {})
            with pytest.raises(ConnectionBrokenError, match="certificate verify failed"):
                await untrusted.connect()

        run(main())
    finally:
        server.stop()


def test_over_tls_a_user_refused_the_doorbells_still_gets_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = TlsRedisServer(tmp_path).start()
    try:
        # Given a user whom an ACL allows no channels, over TLS (redis-py's subscriber)
        admin = redis.Redis(
            host="127.0.0.1", port=server.port, ssl=True, ssl_ca_certs=str(server.ca)
        )
        admin.acl_setuser(
            "nobells", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"],
            reset_channels=True,
        )  # fmt: skip
        admin.close()
        tls = f"127.0.0.1:{server.port}/0?ssl_cert_reqs=required&ssl_ca_certs={server.ca}"

        async def main() -> None:
            t = await opened(f"rediss://nobells:pw@{tls}", polling_interval=0.05)
            publisher = await opened(f"rediss://{tls}")
            try:
                await fetch_polls_past_refused_doorbells(t, publisher)
            finally:
                await t.close()
                await publisher.close()

        run(main())
    finally:
        server.stop()
    refused = "refused to subscribe to a channel"
    said = [m for r in caplog.records if refused in (m := r.getMessage())]
    assert len(said) == 1 and "polling_interval" in said[0]


def test_sentinel_url_finds_the_master(tmp_path: Path, private_redis: RedisServer) -> None:
    sentinel = SentinelServer(tmp_path, private_redis.port).start()
    try:

        async def main() -> None:
            url = f"sentinel://127.0.0.1:{sentinel.port}/3;sentinel://127.0.0.1:{sentinel.port}"
            t = await opened(url, master_name="mymaster")
            try:
                await t.publish([Outgoing(message(b"via-sentinel"), "", "q")])
                assert [m.body for m in await t.fetch(["q"], 1, 1.0)] == [b"via-sentinel"]
            finally:
                await t.close()
            direct = redis.Redis(host="127.0.0.1", port=private_redis.port, db=3)
            assert direct.exists("q") == 0 and direct.exists("unacked") == 1
            direct.close()

        run(main())
    finally:
        sentinel.stop()


def test_consumer_resumes_after_redis_restarts(private_redis: RedisServer) -> None:
    url = private_redis.url

    async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)

    @asynccontext
    async def producer() -> AsyncIterator[RedisTransport]:
        t = await opened(url)
        try:
            yield t
        finally:
            await t.close()

    async def main() -> None:
        seen: list[bytes] = []

        def on_message(m: Message) -> None:
            seen.append(m.body)
            m.ack()

        conn = Connection(url, interval_start=0.05, interval_max=0.2)
        async with conn:
            await conn.declare(Queue("work"))
            consumer = Consumer(conn, [Queue("work")], on_message, fetch_timeout=0.2)
            task = asyncio.create_task(consumer.run())
            async with producer() as p:
                await p.publish([Outgoing(message(b"before"), "", "work")])
            await until(lambda: seen == [b"before"])
            # When Redis goes away and comes back (empty: it keeps nothing on disk)
            await asyncio.to_thread(private_redis.restart, 0.5)
            # Then the consumer reconnects by itself and receives what is sent next
            async with producer() as p:
                await p.publish([Outgoing(message(b"after"), "", "work")])
            await until(lambda: seen == [b"before", b"after"])
            consumer.stop()
            await task

    run(main())


def asynccontext(func: Callable[..., AsyncIterator[T]]) -> Callable[..., Any]:
    import contextlib

    return contextlib.asynccontextmanager(func)


def test_a_forked_child_must_reconnect(shared: tuple[str, str, Any]) -> None:
    url, prefix, raw = shared

    async def main() -> int:
        t = await opened(url, global_keyprefix=prefix)
        pid = os.fork()
        if pid == 0:  # the child: the parent's connection is not its to use

            async def child() -> int:
                try:
                    await t.publish([Outgoing(message(b"child"), "", "q")])
                except ConnectionBrokenError as exc:
                    if "forked child must reconnect" not in str(exc) or t.is_connected:
                        return 3
                    await t.connect()  # a fresh connection of its own works
                    await t.publish([Outgoing(message(b"child"), "", "q")])
                    return 0
                return 4

            os._exit(asyncio.run(child()))
        _, status = os.waitpid(pid, 0)
        assert t.is_connected  # the parent's own connection is untouched
        # And still answers: the child's reconnect did not unregister the parent's
        # sockets from the epoll instance they share
        got = await asyncio.wait_for(t.fetch(["q"], 10, 1.0), 5)
        assert [m.body for m in got] == [b"child"]
        await t.reject(got, requeue=True)
        await t.close()
        return os.waitstatus_to_exitcode(status)

    assert run(main()) == 0
    assert raw.llen(f"{prefix}q") == 1


def _script_calls(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


def test_a_doorbell_wakes_only_the_fetches_of_its_queue(private_redis: RedisServer) -> None:
    # Given one connection fetching two queues separately, polling rarely
    url = private_redis.url
    raw = redis.Redis.from_url(url)

    async def main() -> tuple[int, list[Any]]:
        t = await opened(url, polling_interval=30, unacked_restore_interval=600)
        await t.declare_queue(Queue("jobs"))  # no TTL, no expiry: pushed without a script
        other = asyncio.ensure_future(t.fetch(["other"], 10, 5.0))
        try:
            for i in range(21):
                if i == 1:  # the scripts are loaded, the doorbell subscribed
                    before = _script_calls(url)
                    waiting = raw.zrange("_celeriac.offers.other", 0, -1, withscores=True)
                # When 20 pairs of messages arrive, each ringing the "jobs" doorbell (two
                # at once are pushed, not handed to a waiting fetch)
                pair = [Outgoing(message(f"{i}.{k}".encode()), "", "jobs") for k in (1, 2)]
                await t.publish(pair)
                got = await t.fetch(["jobs"], 10, 2.0)
                assert [m.body for m in got] == [f"{i}.1".encode(), f"{i}.2".encode()]
                await t.ack(got)
            calls = _script_calls(url) - before
            assert not other.done()
            return calls, waiting
        finally:
            other.cancel()
            await t.close()

    calls, waiting = run(main())
    # Then the broker saw one claim and one ack per pair, and the fetch on "other" never
    # claimed on "jobs"' doorbells: its offer (renewed by each of its claims) is unchanged
    assert calls == 40
    assert len(waiting) == 1
    assert raw.zrange("_celeriac.offers.other", 0, -1, withscores=True) == waiting
    raw.close()


def test_after_a_short_claim_the_next_fetch_waits_for_the_doorbell(
    private_redis: RedisServer,
) -> None:
    url = private_redis.url

    async def main() -> tuple[int, list[bytes]]:
        t = await opened(url, polling_interval=30, unacked_restore_interval=600)
        try:
            for body in (b"0", b"1"):  # the second time round, the scripts are loaded
                await t.publish([Outgoing(message(body), "", "jobs")])
                first = await t.fetch(["jobs"], 10, 1.0)  # fewer than asked: list empty
                await t.ack(first)
            before = _script_calls(url)
            # Given nothing new, the next fetch makes no claim while it waits
            assert await t.fetch(["jobs"], 10, 0.2) == []
            idle_calls = _script_calls(url) - before
            # and a publish meanwhile still wakes it at once
            later = asyncio.ensure_future(t.fetch(["jobs"], 10, 5.0))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await t.publish([Outgoing(message(b"2"), "", "jobs")])
            got = await later
            assert time.monotonic() - started < 2.0
            return idle_calls, [m.body for m in got]
        finally:
            await t.close()

    assert run(main()) == (0, [b"2"])


def test_fetches_that_subscribe_at_once_both_hear_their_doorbells(
    private_redis: RedisServer,
) -> None:
    # Given a fresh connection whose first two fetches subscribe at the same moment
    # (a worker's task and control consumers at start-up), polling rarely
    url = private_redis.url

    async def main() -> list[float]:
        t = await opened(url, polling_interval=30, unacked_restore_interval=600)
        try:
            # (a command in flight holds the pooled connection, so each subscription
            # has to open one)
            busy = asyncio.ensure_future(t.queue_length("x"))
            waits = [asyncio.ensure_future(t.fetch([q], 10, 10.0)) for q in ("a", "b")]
            await busy
            await asyncio.sleep(0.1)
            took = []
            # When a message arrives for each
            for q, fetch in zip(("a", "b"), waits, strict=True):
                started = time.monotonic()
                await t.publish([Outgoing(message(q.encode()), "", q)])
                assert [m.body for m in await fetch] == [q.encode()]
                took.append(time.monotonic() - started)
            return took
        finally:
            await t.close()

    # Then each fetch is woken by its doorbell, not by the next poll 30 s later
    assert max(run(main())) < 2.0


def test_a_fetch_waiting_while_bells_are_evicted_still_hears_its_doorbell(
    private_redis: RedisServer,
) -> None:
    url = private_redis.url

    async def main() -> list[bytes]:
        t = await opened(url, polling_interval=30, unacked_restore_interval=600)
        try:
            # Given a fetch waiting for its queue, polling rarely
            waiting = asyncio.ensure_future(t.fetch(["main"], 10, 10.0))
            await asyncio.sleep(0.05)
            # When the connection fetches from so many other queue sets that bells are
            # evicted meanwhile
            for i in range(70):
                await t.fetch([f"other{i}"], 1, 0.001)
            await asyncio.sleep(0.05)
            # Then a message for the waiting fetch still wakes it at once
            started = time.monotonic()
            await t.publish([Outgoing(message(b"m"), "", "main")])
            got = await waiting
            assert time.monotonic() - started < 2.0
            return [m.body for m in got]
        finally:
            await t.close()

    assert run(main()) == [b"m"]
