"""``AsyncResult.get()`` from sync code on the Redis result store: it waits over a
blocking connection, and falls back to the event loop when that connection cannot serve.

Results are written the way a Celery worker writes them (``SETEX`` then ``PUBLISH`` of the
same JSON), from another thread, so the waits are real waits.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ResultTimeoutError

from .conftest import require_transport
from .redis_servers import RedisServer

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")


def _app(url: str, prefix: str, **options: Any) -> Celeriac:
    return Celeriac(
        "waitsync",
        broker="memory://",
        backend=url,
        result_backend_transport_options={"global_keyprefix": prefix, **options},
        set_as_current=False,
    )


def _write(raw: Any, prefix: str, task_id: str, status: str, result: Any = None) -> None:
    key = f"{prefix}celery-task-meta-{task_id}"
    body = json.dumps(
        {"status": status, "result": result, "traceback": None, "children": [],
         "date_done": None, "task_id": task_id}
    )
    raw.set(key, body, ex=60)
    raw.publish(key, body)


def _later(seconds: float, fn: Any, *args: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        fn(*args)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _connected(app: Celeriac, raw: Any, prefix: str) -> None:
    """Connect the app's backend the usual way (the first get() goes through the loop)."""
    _write(raw, prefix, "warm", "SUCCESS", 0)
    assert app.AsyncResult("warm").get(timeout=5) == 0
    assert app.connected_backend() is not None


def _waiting_connections(raw: Any) -> list[dict[str, Any]]:
    """The blocking waits' connections that are subscribed somewhere."""
    from celeriac.backends._redis_waiter import CLIENT_NAME

    return [c for c in raw.client_list() if c.get("name") == CLIENT_NAME and c.get("sub") != "0"]


@contextlib.contextmanager
def _session(**options: Any) -> Iterator[tuple[Celeriac, Any, str]]:
    """An app whose results go to the shared Redis under a prefix of its own, a raw
    client, and the prefix of its keys (deleted afterwards)."""
    require_transport("redis")
    prefix = f"w{uuid.uuid4().hex[:10]}"
    raw = redis.Redis(host="127.0.0.1", port=6379, db=14)
    app = _app("redis://127.0.0.1:6379/14", prefix, **options)
    try:
        yield app, raw, prefix + "_"
    finally:
        app.close()
        for key in raw.scan_iter(f"{prefix}_*"):
            raw.delete(key)
        raw.close()


@pytest.fixture
def shared() -> Iterator[tuple[Celeriac, Any, str]]:
    with _session() as session:
        yield session


def test_get_waits_past_started_for_the_result(shared: tuple[Celeriac, Any, str]) -> None:
    app, raw, prefix = shared
    _connected(app, raw, prefix)
    task_id = uuid.uuid4().hex
    seen: list[Any] = []

    def write_both() -> None:
        _write(raw, prefix, task_id, "STARTED")
        time.sleep(0.1)
        seen.extend(_waiting_connections(raw))
        _write(raw, prefix, task_id, "SUCCESS", 42)

    # When the worker reports STARTED, then the result, while the caller waits
    writer = _later(0.2, write_both)
    # Then get() returns the result, not at STARTED
    assert app.AsyncResult(task_id).get(timeout=10) == 42
    writer.join()
    # And it waited on a RESP3 subscription of its own, not through the event loop
    assert seen, "no blocking subscription was open while get() waited"


def test_get_of_a_stored_result_and_of_a_failure(shared: tuple[Celeriac, Any, str]) -> None:
    app, raw, prefix = shared
    _connected(app, raw, prefix)
    _write(raw, prefix, "done", "SUCCESS", [1, 2])
    assert app.AsyncResult("done").get(timeout=5) == [1, 2]
    failure = {"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"}
    _write(raw, prefix, "failed", "FAILURE", failure)
    with pytest.raises(ValueError, match="bad"):
        app.AsyncResult("failed").get(timeout=5)


def test_get_times_out_with_the_last_state(shared: tuple[Celeriac, Any, str]) -> None:
    app, raw, prefix = shared
    _connected(app, raw, prefix)
    _write(raw, prefix, "slow", "STARTED")
    started = time.monotonic()
    with pytest.raises(ResultTimeoutError, match="STARTED"):
        app.AsyncResult("slow").get(timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    # When the result comes while nobody waits (its message waits on the idle connection)
    _write(raw, prefix, "slow", "SUCCESS", 7)
    time.sleep(0.1)
    assert app.AsyncResult("slow").get(timeout=5) == 7
    # Then the waits after it still each get their own task's result
    _write(raw, prefix, "other", "SUCCESS", 8)
    assert app.AsyncResult("other").get(timeout=5) == 8
    _write(raw, prefix, "third", "SUCCESS", 9)
    assert app.AsyncResult("third").get(timeout=5) == 9


def test_health_checks_during_a_wait_leave_the_next_wait_right() -> None:
    with _session(health_check_interval=0.05) as (app, raw, prefix):
        _connected(app, raw, prefix)
        # Given a wait long enough for several PINGs, ended by its result
        task_id = uuid.uuid4().hex
        writer = _later(0.3, _write, raw, prefix, task_id, "SUCCESS", "late")
        assert app.AsyncResult(task_id).get(timeout=10) == "late"
        writer.join()
        # And one that times out between PINGs
        with pytest.raises(ResultTimeoutError):
            app.AsyncResult("never").get(timeout=0.17)
        # Then the next waits read their own results, not a PONG or another's reply
        for n in range(3):
            _write(raw, prefix, f"k{n}", "SUCCESS", n)
            assert app.AsyncResult(f"k{n}").get(timeout=5) == n


def test_get_survives_its_connection_being_cut(shared: tuple[Celeriac, Any, str]) -> None:
    app, raw, prefix = shared
    _connected(app, raw, prefix)
    task_id = uuid.uuid4().hex
    cut: list[Any] = []

    def cut_then_write() -> None:
        for client in _waiting_connections(raw):
            cut.append(raw.client_kill_filter(_id=client["id"]))
        time.sleep(0.2)
        _write(raw, prefix, task_id, "SUCCESS", "after the cut")

    # When Redis drops the blocking wait's connection, then the result is written
    writer = _later(0.2, cut_then_write)
    # Then get() still returns it (it waits through the event loop instead)
    assert app.AsyncResult(task_id).get(timeout=10) == "after the cut"
    writer.join()
    assert cut, "the blocking wait's connection was not there to cut"


def test_get_on_a_redis_that_refuses_resp3(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        raw = redis.Redis.from_url(server.url)
        # Given a Redis that answers HELLO with an error (as Redis before 6 does)
        raw.execute_command("ACL", "SETUSER", "default", "-hello")
        app = _app(server.url, "old")
        try:
            _connected(app, raw, "old_")
            _later(0.2, _write, raw, "old_", "t1", "SUCCESS", "via the loop")
            # Then get() still waits for and returns the result
            assert app.AsyncResult("t1").get(timeout=10) == "via the loop"
        finally:
            app.close()
            raw.close()
    finally:
        server.stop()
