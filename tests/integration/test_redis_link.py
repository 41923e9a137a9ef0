"""The hot-path Redis connection (``_redis_link``): what a user sees when it breaks or
stalls, on the transport and on the result store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.exceptions import ConnectionBrokenError, ConnectionClosedError
from celeriac.messaging import Exchange, Message, Queue
from celeriac.messaging.transports.base import Outgoing

from .conftest import fetch_polls_past_refused_doorbells
from .redis_servers import RedisServer

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")
from celeriac.backends.redis import RedisBackend  # noqa: E402
from celeriac.messaging.transports.redis import RedisTransport  # noqa: E402


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path).start()
    yield s
    s.stop()


def _message(body: bytes) -> Message:
    return Message(body, {"id": body.decode()}, {}, "application/json", "utf-8")


def _kill_connection(raw: Any, link: Any) -> None:
    """Make Redis drop one connection, found by its local address."""
    host, port = link._transport.get_extra_info("sockname")[:2]
    assert raw.client_kill(f"{host}:{port}")


def test_transport_reports_a_dropped_connection_then_reconnects(server: RedisServer) -> None:
    raw = redis.Redis.from_url(server.url)

    async def main() -> None:
        t = RedisTransport(server.url)
        await t.connect()
        try:
            await t.declare_queue(Queue("work"))
            await t.publish([Outgoing(_message(b"one"), "", "work")])
            # When Redis drops the connection the scripts run on
            _kill_connection(raw, t._link)
            await asyncio.sleep(0.05)
            # Then the next call says the broker connection broke (it does not hang)
            with pytest.raises(ConnectionBrokenError):
                await t.fetch(["work"], 10, 0.5)
            assert not t.is_connected
            # And after reconnecting, the message is still there to claim
            await t.connect()
            got = await t.fetch(["work"], 10, 1.0)
            assert [m.body for m in got] == [b"one"]
            await t.ack(got)
        finally:
            await t.close()

    asyncio.run(main())
    raw.close()


def test_transport_reports_a_dropped_subscription_and_doorbells_wake_it_again(
    server: RedisServer,
) -> None:
    raw = redis.Redis.from_url(server.url)

    async def main() -> None:
        # Polls 60 s apart: within a 5 s fetch only a doorbell finds a new message
        t = RedisTransport(server.url, {"polling_interval": 60})
        publisher = RedisTransport(server.url)
        await t.connect()
        await publisher.connect()
        try:
            await t.declare_queue(Queue("work"))
            assert await t.fetch(["work"], 10, 0.05) == []  # listens to the doorbell
            # When Redis drops the subscription's connection
            _kill_connection(raw, t._subscriber._link)
            await asyncio.sleep(0.05)
            # Then the transport says so (doorbells would be missed) instead of waiting
            assert not t.is_connected
            with pytest.raises(ConnectionBrokenError, match="subscription lost"):
                await t.fetch(["work"], 10, 0.5)
            # And once reconnected, a waiting fetch is woken by the next publish
            await t.connect()
            assert await t.fetch(["work"], 10, 0.05) == []
            waiting = asyncio.ensure_future(t.fetch(["work"], 10, 5.0))
            await asyncio.sleep(0.1)
            await publisher.publish([Outgoing(_message(b"one"), "", "work")])
            got = await waiting
            assert [m.body for m in got] == [b"one"]
            await t.ack(got)
        finally:
            await t.close()
            await publisher.close()

    asyncio.run(main())
    raw.close()


def test_a_subscription_that_stops_answering_is_given_up(server: RedisServer) -> None:
    raw = redis.Redis.from_url(server.url)

    async def main() -> None:
        t = RedisTransport(server.url, {"health_check_interval": 0.2})
        await t.connect()
        try:
            await t.declare_queue(Queue("work"))
            assert await t.fetch(["work"], 10, 0.05) == []  # listens to the doorbell
            # When the subscription's connection goes silent (Redis stops answering)
            raw.client_pause(1500)
            await asyncio.sleep(0.8)
            # Then its unanswered PING gives it up: the transport reconnects instead of
            # missing doorbells and broadcasts for good
            assert not t.is_connected
        finally:
            await t.close()

    asyncio.run(main())
    raw.close()


def test_closing_ends_a_fetch_waiting_for_its_subscription(server: RedisServer) -> None:
    raw = redis.Redis.from_url(server.url)

    async def main() -> None:
        t = RedisTransport(server.url, {"socket_timeout": 30})
        await t.connect()
        try:
            await t.declare_queue(Queue("work"))
            assert await t.fetch(["work"], 10, 0.05) == []
            # Given a fetch of a new queue set waiting for Redis to confirm its doorbells
            raw.client_pause(3000)
            waiting = asyncio.ensure_future(t.fetch(["work", "other"], 10, 5.0))
            await asyncio.sleep(0.1)
            assert not waiting.done()
        finally:
            await t.close()
        # When the transport closes, the fetch says so at once (not after socket_timeout)
        with pytest.raises(ConnectionClosedError):
            async with asyncio.timeout(1.0):
                await waiting

    asyncio.run(main())
    raw.client_unpause()
    raw.close()


def test_a_user_who_may_not_listen_to_doorbells_still_gets_messages(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.user_url("nobells", reset_channels=True)

    async def main() -> None:
        t = RedisTransport(url, {"polling_interval": 0.05})
        publisher = RedisTransport(server.url)
        await t.connect()
        await publisher.connect()
        try:
            # A queue bound to a fanout exchange is declared (its channel refused: said)
            await t.declare_queue(Queue("bcast", Exchange("bcast", type="fanout")))
            # A fetch whose doorbell subscription is refused still finds its message
            await fetch_polls_past_refused_doorbells(t, publisher)
        finally:
            await t.close()
            await publisher.close()

    asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if "refused to subscribe" in r.getMessage()]
    assert len(said) == 2
    assert "fanout channels /0.bcast" in said[0] and "polling_interval" in said[1]


def test_after_a_reconnect_the_allowed_fanout_channels_still_arrive(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    raw = redis.Redis.from_url(server.url)
    # Given a user allowed the channels of fanout exchange "ok" only (as PSUBSCRIBE
    # patterns are checked: literally)
    allowed = list(RedisTransport(server.url).layout.fanout_patterns("ok", ""))
    url = server.user_url("somechannels", reset_channels=True, channels=allowed)

    async def main() -> None:
        t = RedisTransport(url)
        publisher = RedisTransport(server.url)
        await t.connect()
        await publisher.connect()
        try:
            await t.declare_queue(Queue("okq", Exchange("ok", type="fanout")))
            await t.declare_queue(Queue("noq", Exchange("no", type="fanout")))
            # When the subscription is lost and the transport reconnects (which listens
            # again to both exchanges at once)
            _kill_connection(raw, t._subscriber._link)
            await asyncio.sleep(0.05)
            assert not t.is_connected
            await t.connect()
            # Then the allowed exchange's broadcasts still arrive
            await t.fetch(["okq"], 10, 0.05)
            await publisher.publish([Outgoing(_message(b"hello"), "ok", "")])
            got = await t.fetch(["okq"], 10, 2.0)
            assert [m.body for m in got] == [b"hello"]
        finally:
            await t.close()
            await publisher.close()

    asyncio.run(main())
    raw.close()
    said = [r.getMessage() for r in caplog.records if "fanout channels" in r.getMessage()]
    assert len(said) == 1 and "/0.no" in said[0] and "/0.ok" not in said[0]


def test_a_refusal_answering_a_cancelled_subscription_is_not_anothers(
    server: RedisServer,
) -> None:
    url = server.user_url("nobells", reset_channels=True)

    async def main() -> None:
        t = RedisTransport(url, {"polling_interval": 0.05})
        await t.connect()
        try:
            await t.declare_queue(Queue("work"))
            assert await t.fetch(["other"], 10, 0.05) == []  # refused: the link is open
            # Given a doorbell subscription cancelled as soon as it is sent (before its
            # refusal is read), and another confirmation sent right after it
            fetch = asyncio.ensure_future(t.fetch(["work"], 10, 1.0))
            await asyncio.sleep(0)
            fetch.cancel()
            # When Redis answers both
            await t._subscriber.sync()
            # Then Redis's refusal of the cancelled one is not taken for this one's,
            # and the subscription is still up
            assert t.is_connected
        finally:
            await t.close()

    asyncio.run(main())


def test_transport_call_that_stalls_past_socket_timeout_fails(server: RedisServer) -> None:
    raw = redis.Redis.from_url(server.url)

    async def main() -> None:
        t = RedisTransport(server.url, {"socket_timeout": 0.3})
        await t.connect()
        try:
            await t.declare_queue(Queue("work"))
            # When Redis stops answering for longer than socket_timeout
            raw.client_pause(1500)
            started = time.monotonic()
            with pytest.raises(ConnectionBrokenError):
                await t.fetch(["work"], 10, 0.1)
            # Then the call fails at about the timeout, not when Redis answers again
            assert time.monotonic() - started < 1.2
        finally:
            await t.close()

    asyncio.run(main())
    raw.close()


def test_result_store_survives_a_dropped_connection(server: RedisServer) -> None:
    raw = redis.Redis.from_url(server.url)

    async def main() -> None:
        backend = RedisBackend(server.url)
        await backend.connect()
        try:
            meta = {"status": "SUCCESS", "result": 1, "traceback": None, "children": []}
            await backend.store_many([("a", dict(meta))])
            # When Redis drops the connection results are written on
            _kill_connection(raw, backend._link)
            await asyncio.sleep(0.05)
            # Then the next write and read still succeed
            await backend.store_many([("b", dict(meta, result=2))])
            got = await backend.get_many(["a", "b"])
            assert [got["a"]["result"], got["b"]["result"]] == [1, 2]
            # And the fast connection is open again for the calls after them
            assert backend._link is not None and not backend._link.closed
        finally:
            await backend.close()

    asyncio.run(main())
    raw.close()


def test_result_store_after_redis_lost_its_scripts(server: RedisServer) -> None:
    raw = redis.Redis.from_url(server.url)

    async def main() -> None:
        backend = RedisBackend(server.url)
        await backend.connect()
        try:
            # When Redis forgets its scripts (SCRIPT FLUSH, or a restart)
            raw.script_flush()
            meta = {"status": "SUCCESS", "result": 3, "traceback": None, "children": []}
            await backend.store_many([("c", meta)])
            # Then the write still lands
            assert (await backend.get_many(["c"]))["c"]["result"] == 3
        finally:
            await backend.close()

    asyncio.run(main())
    raw.close()
