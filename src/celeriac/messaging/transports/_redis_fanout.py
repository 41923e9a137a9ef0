"""The Redis transport's PUB/SUB side: fanout deliveries and doorbells.

kombu sends fanout messages (events, remote-control broadcasts) with ``PUBLISH`` on
``/<db>.<exchange>[/<routing key>]`` and never stores them; a consumer sees them only while
subscribed. A :class:`Subscriber` holds one pub/sub connection per transport, subscribes to
every fanout exchange a local queue is bound to, and hands each message to the transport,
which buffers it for that queue's ``fetch``.

The same connection listens to celeriac's *doorbell* channels: a celeriac publisher rings
``<prefix>_celeriac.ready/<db>/<queue>`` when a queue's list goes from empty to non-empty,
so a waiting fetch wakes at once instead of at its next poll. (Celery publishers do not
ring; their messages are found by polling.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

__all__ = ["Subscriber", "FanoutBuffer"]

logger = logging.getLogger("celeriac.messaging.redis")

#: Seconds one pub/sub read waits before looping (lets cancellation and checks through).
_READ_TIMEOUT = 1.0


class Subscriber:
    """One pub/sub connection reading fanout messages and doorbells until stopped.

    Args:
        client: The transport's client; the subscriber takes a connection from its pool.
        on_fanout: Called with ``(channel, data)`` for every pattern message.
        on_ready: Called with ``channel`` for every doorbell.
        on_failure: Called once with the exception when the connection breaks.
    """

    def __init__(
        self,
        client: Redis,
        on_fanout: Callable[[str, bytes], None],
        on_ready: Callable[[str], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._client = client
        self._on_fanout = on_fanout
        self._on_ready = on_ready
        self._on_failure = on_failure
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self.patterns: set[str] = set()
        self.channels: set[str] = set()
        #: PING tokens sent by :meth:`sync`, and the futures waiting for their PONG.
        self._pongs: dict[bytes, asyncio.Future[None]] = {}
        self._pings = 0
        #: The exception that ended the reader, if it failed.
        self.failure: BaseException | None = None
        #: (Un)subscriptions one at a time: two first ones at once would each open a
        #: connection, and the reader would read only one of them (doorbells lost).
        self._changing: asyncio.Lock | None = None

    def _lock(self) -> asyncio.Lock:
        if self._changing is None:
            self._changing = asyncio.Lock()
        return self._changing

    async def psubscribe(self, *patterns: str) -> None:
        async with self._lock():
            new = [p for p in patterns if p not in self.patterns]
            if new:
                await self._ensure().psubscribe(*new)
                self.patterns.update(new)
                self._start()

    async def punsubscribe(self, *patterns: str) -> None:
        async with self._lock():
            gone = [p for p in patterns if p in self.patterns]
            if gone and self._pubsub is not None:
                self.patterns.difference_update(gone)
                await self._pubsub.punsubscribe(*gone)

    async def subscribe(self, *channels: str) -> bool:
        """Subscribe to doorbells; True when something new was subscribed."""
        async with self._lock():
            new = [c for c in channels if c not in self.channels]
            if not new:
                return False
            await self._ensure().subscribe(*new)
            self.channels.update(new)
            self._start()
            return True

    async def sync(self, timeout: float = 5.0) -> None:
        """Return once every message published before this call has been handled.

        Redis writes a PUBLISH into each subscriber's stream before it answers the
        publisher, and answers this connection's PING after whatever it already queued,
        so the PONG marks a point after every earlier fanout message.
        """
        if self._pubsub is None or self._task is None or self._task.done():
            return
        self._pings += 1
        token = b"celeriac-sync-%d" % self._pings
        future = asyncio.get_running_loop().create_future()
        self._pongs[token] = future
        try:
            await self._pubsub.ping(token)
            async with asyncio.timeout(timeout):
                await future
        finally:
            self._pongs.pop(token, None)

    def _ensure(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        return self._pubsub

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._read(), name="celeriac-redis-pubsub"
            )

    async def _read(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        try:
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_READ_TIMEOUT
                )
                if message is None:
                    continue
                kind = message["type"]
                channel = _text(message["channel"])
                if kind == "pmessage":
                    self._on_fanout(channel, message["data"])
                elif kind == "message":
                    self._on_ready(channel)
                elif kind == "pong":
                    future = self._pongs.pop(message["data"], None)
                    if future is not None and not future.done():
                        future.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            for future in self._pongs.values():
                if not future.done():
                    future.set_exception(exc)
            self._on_failure(exc)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class FanoutBuffer:
    """Fanout messages waiting in one local queue, oldest first, bounded.

    Fanout messages are not persisted by kombu either; when a consumer falls so far behind
    that the buffer is full, the oldest are dropped and counted, with a warning.
    """

    __slots__ = ("dropped", "items", "limit", "queue")

    def __init__(self, queue: str, limit: int) -> None:
        self.queue = queue
        self.limit = limit
        self.items: deque[tuple[bytes, int]] = deque()
        self.dropped = 0

    def push(self, raw: bytes, front: bool = False, count: int = 1) -> None:
        if front:
            self.items.appendleft((raw, count))
        else:
            self.items.append((raw, count))
        if len(self.items) > self.limit:
            self.items.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "fanout buffer of queue %r is full (%d messages): dropped %d so far; "
                    "fetch from it faster or bind fewer routing keys",
                    self.queue,
                    self.limit,
                    self.dropped,
                )

    def take(self, limit: int) -> list[tuple[bytes, int]]:
        items = self.items
        out = []
        while items and len(out) < limit:
            out.append(items.popleft())
        return out

    def __len__(self) -> int:
        return len(self.items)
