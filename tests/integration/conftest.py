"""Every integration test body runs once per transport.

``memory`` and ``sqlite`` always run. ``redis`` and ``amqp`` run when their transport
module is importable and their service answers on 127.0.0.1; otherwise they are skipped
with the reason, except under ``CI=true``, where a missing service is a failure (CI
must test every transport).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.messaging.transports import get_transport_cls
from celeriac.messaging.transports.base import Transport
from tests.redis_keys import delete_matching

from .redis_servers import RedisServer

#: Transport name -> (module that must import, service port or None).
TRANSPORT_NEEDS: dict[str, tuple[str, int | None]] = {
    "memory": ("celeriac.messaging.transports.memory", None),
    "sqlite": ("celeriac.messaging.transports.sqlite", None),
    "redis": ("celeriac.messaging.transports.redis", 6379),
    "amqp": ("celeriac.messaging.transports.amqp", 5672),
}

TRANSPORT_PARAMS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("amqp", id="amqp", marks=pytest.mark.amqp),
]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def require_transport(name: str) -> None:
    """Skip (or, under CI=true, fail) when ``name``'s module or service is missing."""
    module, port = TRANSPORT_NEEDS[name]
    reason = None
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        # Not built yet: nothing to test, in CI or not.
        pytest.skip(f"{name} transport not implemented ({module} cannot be imported)")
    elif port is not None and not _port_open(port):
        reason = f"{name} service not reachable on 127.0.0.1:{port}"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _url_for(name: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A broker URL (and base transport options) isolated to one test."""
    if name == "memory":
        return f"memory://test-{uuid.uuid4().hex}", {}
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}", {}
    if name == "redis":
        return "redis://127.0.0.1:6379/15", {"global_keyprefix": f"t{uuid.uuid4().hex[:12]}:"}
    return "amqp://guest:guest@127.0.0.1:5672//", {}


@pytest.fixture(params=TRANSPORT_PARAMS)
def transport_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL for the transport under test, isolated to this test."""
    name: str = request.param
    require_transport(name)
    url, options = _url_for(name, tmp_path)
    request.node.stash[_OPTIONS_KEY] = options
    return url


_OPTIONS_KEY = pytest.StashKey[dict[str, Any]]()


@pytest.fixture
def base_options(request: pytest.FixtureRequest, transport_url: str) -> dict[str, Any]:
    """Transport options the URL needs for isolation (e.g. a Redis key prefix)."""
    return dict(request.node.stash.get(_OPTIONS_KEY, {}))


@pytest.fixture
def open_transport(
    transport_url: str, base_options: dict[str, Any]
) -> Callable[..., contextlib.AbstractAsyncContextManager[Transport]]:
    """``async with open_transport(visibility_timeout=0.3) as t``: a connected transport."""

    @contextlib.asynccontextmanager
    async def factory(**options: Any) -> AsyncIterator[Transport]:
        transport = get_transport_cls(transport_url)(transport_url, {**base_options, **options})
        await transport.connect()
        try:
            yield transport
        finally:
            await transport.close()

    return factory


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Queue and exchange names unique to this test (brokers outlive test runs)."""
    token = uuid.uuid4().hex[:8]
    return lambda name: f"{name}-{token}"


def queue_length(app: Any, name: str) -> int:
    """Messages waiting in ``name`` on ``app``'s broker, read from sync test code."""
    from celeriac.utils import portal

    async def length() -> int:
        conn = await app.get_connection()
        return int(await conn.transport.queue_length(name))

    return portal.run(length())


async def fetch_polls_past_refused_doorbells(t: Transport, publisher: Transport) -> None:
    """For a transport whose user may not subscribe to doorbells: a fetch still finds a
    message published after it started waiting (at a poll), and the connection stays."""
    from celeriac.messaging import Message, Queue
    from celeriac.messaging.transports.base import Outgoing

    await t.declare_queue(Queue("work"))
    assert await t.fetch(["work"], 10, 0.2) == []  # its doorbell subscription is refused
    body = Message(b"one", {"id": "one"}, {}, "application/json", "utf-8")
    await publisher.publish([Outgoing(body, "", "work")])
    got = await t.fetch(["work"], 10, 2.0)
    assert [m.body for m in got] == [b"one"]
    await t.ack(got)
    assert t.is_connected


@pytest.fixture
def shared() -> Iterator[tuple[str, str, Any]]:
    """The shared Redis (db 15), a key prefix unique to this test, and a raw client."""
    require_transport("redis")
    redis = pytest.importorskip("redis")
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    raw = redis.Redis(host="127.0.0.1", port=6379, db=15)
    yield "redis://127.0.0.1:6379/15", prefix, raw
    delete_matching(raw, f"{prefix}*")
    raw.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that restart or reconfigure it."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
