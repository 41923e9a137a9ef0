"""``delay()`` from sync code on Redis: blocking connections that skip the event loop.

What a user sees must not depend on which path a call took: the message Redis holds,
queue arguments (TTL), survival of a Redis restart, threads and forked children.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.messaging import Queue
from celeriac.testing import start_worker
from celeriac.utils import portal
from tests.redis_keys import delete_matching
from tests.threads import on_threads

from .conftest import queue_length, require_transport
from .redis_servers import RedisServer

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")


def make_app(
    url: str, prefix: str, transport_options: dict[str, Any] | None = None, **conf: Any
) -> Celeriac:
    app = Celeriac(
        "syncpub",
        broker=url,
        backend=f"memory://{uuid.uuid4().hex}",
        broker_transport_options={
            "global_keyprefix": prefix, "polling_interval": 0.05, **(transport_options or {})
        },
        set_as_current=False,
        **conf,
    )

    @app.task(name="syncpub.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


@pytest.fixture
def shared() -> Iterator[tuple[Celeriac, Any, str]]:
    require_transport("redis")
    prefix = f"s{uuid.uuid4().hex[:10]}:"
    raw = redis.Redis(host="127.0.0.1", port=6379, db=14)
    app = make_app("redis://127.0.0.1:6379/14", prefix)
    yield app, raw, prefix
    app.close()
    delete_matching(raw, f"{prefix}*")
    raw.close()


def sync_transport(app: Celeriac) -> Any:
    producer = app._producers[portal.caller_loop()]
    return producer.connection.transport


def envelopes(raw: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(e) for e in reversed(raw.lrange(key, 0, -1))]


def test_sync_and_async_sends_leave_the_same_message(shared: tuple[Celeriac, Any, str]) -> None:
    app, raw, prefix = shared
    add = app.tasks["syncpub.add"]
    first = add.delay(1, 2)  # through the loop: connects and declares the queue
    assert sync_transport(app)._sync is not None
    calls = raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    second = add.delay(3, 4)  # the blocking path
    third = add.apply_async((5, 6), priority=6)
    # Then the plain queue took no script call for them (no worker waits on it: nothing
    # to hand off)
    assert raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) == calls
    got = envelopes(raw, f"{prefix}celery")
    assert [e["headers"]["id"] for e in got] == [first.id, second.id]
    # Then both are kombu's envelope with the same keys and the same properties' shape
    a, b = got
    assert a.keys() == b.keys()
    assert a["properties"].keys() == b["properties"].keys()
    assert b["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert b["properties"]["delivery_tag"] == second.id
    # Then the priority message went to its priority list, as kombu puts it
    (p6,) = envelopes(raw, f"{prefix}celery\x06\x166")
    assert p6["headers"]["id"] == third.id and p6["properties"]["priority"] == 6
    # And a worker runs all three
    with start_worker(app):
        assert [r.get(timeout=10) for r in (first, second, third)] == [3, 7, 11]


def test_a_queue_with_a_message_ttl_keeps_it_for_sync_sends(
    shared: tuple[Celeriac, Any, str],
) -> None:
    app, raw, prefix = shared
    app.conf.task_queues = [Queue("short", message_ttl=0.3)]
    add = app.tasks["syncpub.add"]
    add.apply_async((1, 1), queue="short")  # declares the queue
    add.apply_async((2, 2), queue="short")  # the blocking path: still gets the TTL
    assert raw.zcard(f"{prefix}_celeriac.ttl.short") == 2
    time.sleep(0.5)
    with start_worker(app, queues=["short"]):
        time.sleep(0.5)
    assert queue_length(app, "short") == 0  # both outlived their TTL: dropped, not run


def test_threads_send_at_once_without_losing_a_call(shared: tuple[Celeriac, Any, str]) -> None:
    app, raw, prefix = shared
    add = app.tasks["syncpub.add"]
    add.delay(0, 0)
    sent = on_threads(lambda: [add.delay(i, i).id for i in range(300)], 8)
    ids = [i for mine in sent for i in mine]
    stored = {e["headers"]["id"] for e in envelopes(raw, f"{prefix}celery")}
    assert len(ids) == 2400 and set(ids) <= stored


def test_polling_for_replies_stops_where_redis_answers_too_late(
    shared: tuple[Celeriac, Any, str],
) -> None:
    _, raw, prefix = shared
    from celeriac.messaging.transports import _redis_sync

    # Given a poll far shorter than most replies take (as against a remote Redis)
    slow = make_app("redis://127.0.0.1:6379/14", prefix, {"sync_publish_spin": 1e-9})
    try:
        add = slow.tasks["syncpub.add"]
        add.delay(0, 0)  # through the loop: connects and declares
        publisher = sync_transport(slow)._sync
        if publisher._spin == 0:
            pytest.skip("one CPU: replies are never polled for")
        ids = [add.delay(i, i).id for i in range(20)]
        # Then every call is stored, whether its reply was polled for or slept for
        stored = {e["headers"]["id"] for e in envelopes(raw, f"{prefix}celery")}
        assert set(ids) <= stored
        # And polls that a peer never answers in time stop after _SPIN_MISSES in a row
        # (a loopback Redis sometimes answers within the poll, so a silent peer stands in)
        quiet, silent = socket.socketpair()
        try:
            publisher._spin_paused_until = 0.0
            publisher._misses = 0
            link = _redis_sync._Link(quiet)
            for _ in range(_redis_sync._SPIN_MISSES - 1):
                publisher._poll(link)
            assert publisher._spin_paused_until == 0.0
            publisher._poll(link)
            assert publisher._spin_paused_until > time.monotonic()
            silent.send(b"+OK\r\n")  # paused: not even a waiting reply is polled for
            publisher._poll(link)
            assert link.reader.gets() is False
        finally:
            quiet.close()
            silent.close()
    finally:
        slow.close()
    # And with the option at 0 a publisher never polls
    off = make_app("redis://127.0.0.1:6379/14", prefix, {"sync_publish_spin": 0})
    try:
        off.tasks["syncpub.add"].delay(0, 0)
        assert sync_transport(off)._sync._spin == 0
    finally:
        off.close()


def test_a_forked_child_sends_on_connections_of_its_own(shared: tuple[Celeriac, Any, str]) -> None:
    app, raw, prefix = shared
    add = app.tasks["syncpub.add"]
    add.delay(0, 0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send, say the ids, leave without cleanup
        try:
            ids = [add.delay(i, 1).id for i in range(50)]
            os.write(write, json.dumps(ids).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_ids = json.loads(pipe.read())
    os.waitpid(pid, 0)
    mine = [add.delay(i, 2).id for i in range(50)]  # the parent's connections still work
    stored = [e["headers"]["id"] for e in envelopes(raw, f"{prefix}celery")]
    assert set(child_ids) | set(mine) <= set(stored)
    assert len(stored) == len(set(stored)) == 101


def test_sync_sends_survive_a_redis_restart(private_redis: RedisServer) -> None:
    app = make_app(private_redis.url, "")
    add = app.tasks["syncpub.add"]
    try:
        [add.delay(i, 0) for i in range(20)]
        # Given Redis restarts (empty: this one keeps no data) under the blocking connections
        private_redis.restart()
        after = [add.delay(i, 1).id for i in range(20)]
        # Then every call after it was stored: the broken connection's call went through
        # the loop, which reconnected and declared again, and later ones use fresh
        # blocking connections
        raw = redis.Redis.from_url(private_redis.url)
        stored = [json.loads(e)["headers"]["id"] for e in raw.lrange("celery", 0, -1)]
        assert raw.exists("_celeriac.queue.celery")  # declared again after the restart
        raw.close()
        assert sorted(stored) == sorted(after)
        assert sync_transport(app)._sync is not None
    finally:
        app.close()


def test_wrong_password_is_still_a_clear_error(shared: tuple[Celeriac, Any, str]) -> None:
    prefix = shared[2]
    bad = make_app("redis://nobody:wrong@127.0.0.1:6379/14", prefix)
    try:
        with pytest.raises(Exception, match="refused the credentials"):
            bad.tasks["syncpub.add"].delay(1, 2)
    finally:
        bad.close()


def test_a_user_without_channel_rights_still_stores_each_call_once(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an ACL user that may write keys but not publish (Redis 7's default for new
    # users), so the doorbell after a push to an empty queue is refused
    url = private_redis.user_url("pusher", commands=["+@all", "-publish"])
    admin = redis.Redis.from_url(private_redis.url)
    app = make_app(url, "")
    add = app.tasks["syncpub.add"]
    try:
        ids = []
        for i in range(5):
            ids.append(add.delay(i, 0).id)
            if i == 2:  # the queue empties (a worker took what waited): rung again
                admin.delete("celery")
        # Then each call is stored once, not pushed again by a fallback
        stored = [json.loads(e)["headers"]["id"] for e in admin.lrange("celery", 0, -1)]
        assert sorted(stored) == sorted(ids[3:])
        # And the refused wake-up is said once, with what to do about it
        said = [r.getMessage() for r in caplog.records if "refused a doorbell" in r.getMessage()]
        assert len(said) == 1 and "allow this user to publish" in said[0]
    finally:
        app.close()
        admin.close()
