"""The Redis result store against a real Redis: Celery's layout, batching, waiting.

The behaviours every store shares are in ``test_backends.py``; these are the ones only
Redis has: key names and bytes as Celery writes them, the publish that wakes Celery's
clients, one round trip per batch, the atomic guard, one shared subscription for every
waiter, and recovery when that subscription's connection is cut.

Runs against Redis on 127.0.0.1:6379, database 14, every test under its own key prefix
(deleted afterwards). Skipped without Redis, a failure under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from celeriac import states
from celeriac.backends import get_backend_cls
from celeriac.backends.meta import make_meta
from celeriac.backends.redis import ChordCounters, RedisBackend
from celeriac.exceptions import (
    ConfigurationError,
    ConnectionBrokenError,
    ContentDisallowed,
    ResultTimeoutError,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.redis]

URL = "redis://127.0.0.1:6379/14"


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True)
def _require_redis() -> None:
    if not _redis_up():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but Redis is not reachable on 127.0.0.1:6379")
        pytest.skip("Redis not reachable on 127.0.0.1:6379")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest_asyncio.fixture
async def raw(prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the test database; deletes the test's keys afterwards."""
    client = aioredis.Redis.from_url(URL)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    keys += [key async for key in client.scan_iter(match="rpfx_*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


OpenBackend = Callable[..., Awaitable[RedisBackend]]


@pytest_asyncio.fixture
async def open_backend(prefix: str, raw: aioredis.Redis) -> AsyncIterator[OpenBackend]:
    # ``raw`` is requested so the test's keys are deleted after the backends close.
    made: list[RedisBackend] = []

    async def open_(url: str = URL, **kwargs: Any) -> RedisBackend:
        options = {"global_keyprefix": prefix, **kwargs.pop("options", {})}
        backend = RedisBackend(url, options=options, **kwargs)
        await backend.connect()
        made.append(backend)
        return backend

    yield open_
    for backend in made:
        await backend.close()


def _id() -> str:
    return str(uuid.uuid4())


async def _clients_named(raw: aioredis.Redis, name: str) -> list[dict[str, Any]]:
    return [c for c in await raw.client_list() if c.get("name") == name]


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False


# -- Celery's layout ----------------------------------------------------------------------


async def test_meta_is_stored_under_celerys_key_as_celerys_json_with_expiry(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    # Given a backend keeping results for an hour
    backend = await open_backend(expires=3600)
    tid = _id()
    # When a success is stored
    await backend.store(tid, make_meta(tid, states.SUCCESS, {"sum": 5}, group_id="g1"))
    # Then the key is Celery's, the value Celery's JSON, and the TTL the expiry
    key = f"{prefix}celery-task-meta-{tid}"
    stored = json.loads(await raw.get(key))
    assert stored["status"] == "SUCCESS" and stored["result"] == {"sum": 5}
    assert stored["task_id"] == tid and stored["group_id"] == "g1"
    assert set(stored) >= {"traceback", "children", "date_done"}
    assert 3590 < await raw.ttl(key) <= 3600


async def test_results_that_never_expire_are_set_without_ttl(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    backend = await open_backend(expires=None)
    tid = _id()
    await backend.store(tid, make_meta(tid, states.SUCCESS, 1))
    assert await raw.ttl(f"{prefix}celery-task-meta-{tid}") == -1


async def test_fractional_expiry_is_kept_in_milliseconds(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    backend = await open_backend(expires=1.5)
    tid = _id()
    await backend.store(tid, make_meta(tid, states.SUCCESS, 1))
    assert 1000 < await raw.pttl(f"{prefix}celery-task-meta-{tid}") <= 1500


@pytest.mark.parametrize(
    ("given", "key_prefix"),
    [("rpfx", "rpfx_"), ("rpfx:", "rpfx:"), ("rpfx.", "rpfx."), ("rpfx-", "rpfx-")],
)
async def test_global_keyprefix_follows_celerys_underscore_rule(
    raw: aioredis.Redis, given: str, key_prefix: str, prefix: str
) -> None:
    # the prefixes here are fixed by the rule under test, so make the id unique instead
    backend = RedisBackend(URL, options={"global_keyprefix": given})
    await backend.connect()
    tid = f"{prefix}{_id()}"
    try:
        await backend.store(tid, make_meta(tid, states.SUCCESS, 1))
        key = f"{key_prefix}celery-task-meta-{tid}"
        assert json.loads(await raw.get(key))["status"] == "SUCCESS"
    finally:
        await backend.forget([tid])
        await backend.close()


async def test_every_write_is_published_on_the_channel_named_like_its_key(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    # Given a plain subscriber on the result key's channel (what Celery's client does)
    backend = await open_backend()
    tid = _id()
    key = f"{prefix}celery-task-meta-{tid}"
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(key)
    try:
        # When a state and then a result are stored
        await backend.store(tid, make_meta(tid, states.STARTED, {"pid": 1}))
        await backend.store(tid, make_meta(tid, states.SUCCESS, 7))
        got = []
        async with asyncio.timeout(5):
            while len(got) < 2:
                message = await pubsub.get_message(timeout=1)
                if message is not None:  # None: a subscribe confirmation, or nothing yet
                    got.append(message["data"])
    finally:
        await pubsub.aclose()
    # Then each publish carries the stored JSON, the last one byte for byte
    assert [json.loads(data)["status"] for data in got] == ["STARTED", "SUCCESS"]
    assert got[-1] == await raw.get(key)


# -- batches and the guard ----------------------------------------------------------------


async def test_a_batch_of_100_is_one_command_on_the_wire(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    # Given a MONITOR session recording what clients send
    backend = await open_backend()
    ids = [_id() for _ in range(100)]
    sentinel = f"{prefix}end"
    commands: list[str] = []
    async with raw.monitor() as monitor:

        async def record() -> None:
            while True:
                info = await monitor.next_command()
                if sentinel in info["command"]:
                    return
                if prefix in info["command"] and info.get("client_type") != "lua":
                    commands.append(info["command"].split(" ", 1)[0].upper())

        recorder = asyncio.create_task(record())
        await asyncio.sleep(0.05)
        # When 100 results are stored in one call
        await backend.store_many([(t, make_meta(t, states.SUCCESS, i)) for i, t in enumerate(ids)])
        async with aioredis.Redis.from_url(URL) as other:
            await other.echo(sentinel)
        await asyncio.wait_for(recorder, 10)
    # Then one client command carried them all, and all were stored
    assert commands == ["EVALSHA"]
    metas = await backend.get_many(ids)
    assert [metas[t]["result"] for t in ids] == list(range(100))


async def test_concurrent_writers_cannot_replace_a_success(open_backend: OpenBackend) -> None:
    # Given two writers racing on the same ids, one with SUCCESS, one with a late STARTED
    a, b = await open_backend(), await open_backend()
    ids = [_id() for _ in range(200)]
    successes = [(t, make_meta(t, states.SUCCESS, "done")) for t in ids]
    lates = [(t, make_meta(t, states.STARTED)) for t in ids]
    # When they write at the same time, several rounds in both orders
    for _ in range(5):
        await asyncio.gather(a.store_many(successes), b.store_many(lates))
        await asyncio.gather(b.store_many(lates), a.store_many(successes))
    # Then every id still reads SUCCESS
    metas = await a.get_many(ids)
    assert {m["status"] for m in metas.values()} == {states.SUCCESS}


@pytest.mark.parametrize(
    "stored",
    [
        b'{"status": "SUCCESS", "result": 1, "traceback": null, "children": []}',
        b'{"result": {"status": "PENDING"}, "status": "SUCCESS"}',
        msgpack.packb({"status": "SUCCESS", "result": 1}),
    ],
    ids=["celery-json", "status-not-first", "msgpack"],
)
async def test_guard_reads_metas_written_by_other_clients(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str, stored: bytes
) -> None:
    # Given a SUCCESS written by someone else, in another JSON spelling or format
    backend = await open_backend(accept=["json", "msgpack"])
    tid = _id()
    await raw.set(f"{prefix}celery-task-meta-{tid}", stored)
    # When a late STARTED is stored
    await backend.store(tid, make_meta(tid, states.STARTED))
    # Then the success is kept
    assert (await backend.get_meta(tid))["status"] == states.SUCCESS


async def test_a_value_over_the_size_limit_is_stored_as_a_failure_saying_so(
    open_backend: OpenBackend, prefix: str
) -> None:
    class Small(RedisBackend):
        max_value_size = 300

    backend = Small(URL, options={"global_keyprefix": prefix})
    await backend.connect()
    try:
        tid = _id()
        await backend.store(tid, make_meta(tid, states.SUCCESS, "x" * 1000))
        meta = await backend.get_meta(tid)
    finally:
        await backend.close()
    assert meta["status"] == states.FAILURE
    assert meta["result"]["exc_type"] == "EncodeError"
    assert "300-byte limit" in meta["result"]["exc_message"][0]


# -- reading ------------------------------------------------------------------------------


async def test_a_pickled_meta_is_refused_undecoded_by_a_json_reader(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("exit 1",))

    backend = await open_backend()
    tid = _id()
    await raw.set(f"{prefix}celery-task-meta-{tid}", pickle.dumps({"status": Boom()}))
    with pytest.raises(ContentDisallowed, match="x-python-serialize"):
        await backend.get_meta(tid)


async def test_a_reader_decodes_any_format_it_accepts(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    backend = await open_backend(serializer="json", accept=["json", "msgpack"])
    tid = _id()
    await raw.set(
        f"{prefix}celery-task-meta-{tid}", msgpack.packb({"status": "SUCCESS", "result": [1, 2]})
    )
    assert (await backend.get_meta(tid))["result"] == [1, 2]


# -- waiting ------------------------------------------------------------------------------


async def test_a_thousand_waiters_share_one_subscription_connection(
    open_backend: OpenBackend, raw: aioredis.Redis
) -> None:
    # Given 1,000 calls waiting at once on one backend
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    waiter = await open_backend(options={"client_name": name})
    writer = await open_backend()
    ids = [_id() for _ in range(1000)]
    waits = [asyncio.create_task(waiter.wait_for(t, timeout=30)) for t in ids]

    async def all_subscribed() -> bool:
        return sum(int(c["sub"]) for c in await _clients_named(raw, name)) == len(ids)

    # Then one connection holds all 1,000 subscriptions, beside a few command connections
    assert await _eventually(all_subscribed), await _clients_named(raw, name)
    clients = await _clients_named(raw, name)
    assert [int(c["sub"]) for c in clients if int(c["sub"])] == [1000]
    assert len(clients) <= 1 + 10
    # When the results are stored, every waiter wakes with its own
    await writer.store_many([(t, make_meta(t, states.SUCCESS, t)) for t in ids])
    metas = await asyncio.gather(*waits)
    assert [m["result"] for m in metas] == ids

    # And once nobody waits, the subscriptions are gone
    async def none_subscribed() -> bool:
        return all(int(c["sub"]) == 0 for c in await _clients_named(raw, name))

    assert await _eventually(none_subscribed)


async def test_waiters_are_woken_by_the_publish_not_by_polling(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    # Given a waiter, and a ready meta written without a publish
    backend = await open_backend()
    tid = _id()
    key = f"{prefix}celery-task-meta-{tid}"
    body = json.dumps({"status": "SUCCESS", "result": 3, "task_id": tid}).encode()
    waiting = asyncio.create_task(backend.wait_for(tid, timeout=20))
    await asyncio.sleep(0.1)
    await raw.set(key, body)
    # Then the waiter keeps sleeping (nobody re-reads the key on a timer)
    await asyncio.sleep(0.5)
    assert not waiting.done()
    # When the publish comes, it wakes
    await raw.publish(key, body)
    assert (await asyncio.wait_for(waiting, 5))["result"] == 3


async def test_a_cancelled_wait_gives_back_its_subscription(
    open_backend: OpenBackend, raw: aioredis.Redis
) -> None:
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    backend = await open_backend(options={"client_name": name})
    waiting = asyncio.create_task(backend.wait_for(_id(), timeout=20))

    async def subscribed(count: int) -> bool:
        return sum(int(c["sub"]) for c in await _clients_named(raw, name)) == count

    assert await _eventually(lambda: subscribed(1))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await _eventually(lambda: subscribed(0))


async def test_a_result_stored_while_the_subscription_is_cut_still_wakes_the_waiter(
    open_backend: OpenBackend, raw: aioredis.Redis
) -> None:
    # Given a waiter subscribed on its connection
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    backend = await open_backend(options={"client_name": name})
    writer = await open_backend()
    tid = _id()
    waiting = asyncio.create_task(backend.wait_for(tid, timeout=20))

    async def subscription() -> dict[str, Any] | None:
        return next((c for c in await _clients_named(raw, name) if int(c["sub"])), None)

    async def has_subscription() -> bool:
        return await subscription() is not None

    assert await _eventually(has_subscription)
    old = await subscription()
    assert old is not None
    # When that connection is killed and the result stored right away (its publish lost)
    await raw.execute_command("CLIENT", "KILL", "ID", old["id"])
    await writer.store(tid, make_meta(tid, states.SUCCESS, "after the cut"))
    # Then the waiter still gets it, over a new subscription
    meta = await asyncio.wait_for(waiting, 10)
    assert meta["result"] == "after the cut"
    again = asyncio.create_task(backend.wait_for(_id(), timeout=20))
    assert await _eventually(has_subscription)
    new = await subscription()
    assert new is not None and new["id"] != old["id"]
    again.cancel()


async def test_a_timed_out_wait_names_the_last_state(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    tid = _id()
    await backend.store(tid, make_meta(tid, states.RETRY))
    with pytest.raises(ResultTimeoutError, match="RETRY"):
        await backend.wait_for(tid, timeout=0.1)


# -- groups and chords --------------------------------------------------------------------


async def test_saved_group_reads_back_under_celerys_key(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    backend = await open_backend()
    gid = _id()
    tup = [[gid, None], [[["a", None], None], [["b", None], None]]]
    await backend.save_group(gid, tup)
    assert json.loads(await raw.get(f"{prefix}celery-taskset-meta-{gid}")) == {"result": tup}
    assert await backend.get_group(gid) == {"result": tup}
    await backend.forget_group(gid)
    assert await backend.get_group(gid) is None


async def test_chord_counters_read_celerys_bookkeeping(
    open_backend: OpenBackend, raw: aioredis.Redis, prefix: str
) -> None:
    backend = await open_backend()
    gid = _id()
    base = f"{prefix}celery-taskset-meta-{gid}"
    assert await backend.chord_counters(gid) == ChordCounters(0, None, 0)
    await raw.set(f"{base}.s", 3)
    await raw.zadd(f"{base}.j", {'[1, "a", "SUCCESS", 1]': 0, '[1, "b", "SUCCESS", 2]': 1})
    await raw.incr(f"{base}.t")
    assert await backend.chord_counters(gid) == ChordCounters(2, 3, 1)


# -- configuration and failures -----------------------------------------------------------


async def test_registry_picks_this_backend_for_both_schemes() -> None:
    assert get_backend_cls("redis://h/0") is RedisBackend
    assert get_backend_cls("rediss://h/0") is RedisBackend


async def test_password_is_masked_in_repr_and_errors() -> None:
    backend = RedisBackend("redis://user:s3cret@127.0.0.1:6379/14")
    assert "s3cret" not in repr(backend) and "user:**@" in repr(backend)
    with pytest.raises(ConfigurationError, match="refused the credentials") as info:
        await backend.connect()
    assert "s3cret" not in str(info.value)


async def test_unreachable_redis_is_a_connection_broken_error() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionBrokenError, match=r"127\.0\.0\.1:1\b"):
        await backend.connect()


@pytest.mark.parametrize(
    ("options", "url", "fragment"),
    [
        ({"global_keyprefx": "p"}, URL, "did you mean 'global_keyprefix'"),
        ({"global_keyprefix": 5}, URL, "global_keyprefix.*must be a string"),
        ({"socket_timeout": "soon"}, URL, "socket_timeout.*seconds"),
        ({"max_connections": 0}, URL, "at least 1"),
        ({"password": 123}, URL, r"password.*\*\*"),
        ({"ssl_cert_reqs": "required"}, URL, "need a rediss:// URL"),
        ({"ssl_cert_reqs": "sometimes"}, "rediss://h:6380/0", "required, optional or none"),
        ({}, "redis://h:port/0", "bad Redis result backend URL"),
    ],
)
async def test_bad_configuration_is_refused_up_front(
    options: dict[str, Any], url: str, fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        RedisBackend(url, options=options)


async def test_use_before_connect_is_a_clear_error() -> None:
    from celeriac.exceptions import ConnectionClosedError

    backend = RedisBackend(URL)
    with pytest.raises(ConnectionClosedError, match="connect"):
        await backend.get_meta("x")
