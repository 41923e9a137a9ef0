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

The connection is a :class:`LinkSubscriber` (hiredis, read in the loop's callback) where
the client options are plain, else a :class:`Subscriber` on redis-py (TLS, Sentinel).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from ._redis_link import PushLink

__all__ = ["FanoutBuffer", "LinkSubscriber", "Subscriber"]

logger = logging.getLogger("celeriac.messaging.redis")

#: Seconds one pub/sub read waits before looping (lets cancellation and checks through).
_READ_TIMEOUT = 1.0

#: Seconds a (un)subscription waits for Redis's confirmation without ``socket_timeout``.
_CONFIRM_TIMEOUT = 10.0


class _Subscriptions:
    """What both subscribers share: the channels and patterns listened to, ``sync``'s
    PING tokens, and the one failure reported to the transport.

    Args:
        on_fanout: Called with ``(channel, data)`` for every pattern message.
        on_ready: Called with ``(channel, data)`` for every channel message: doorbells,
            and hand-offs on the transport's own channel.
        on_failure: Called once with the exception when the connection breaks.
    """

    def __init__(
        self,
        on_fanout: Callable[[str, bytes], None],
        on_ready: Callable[[str, bytes], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._on_fanout = on_fanout
        self._on_ready = on_ready
        self._on_failure = on_failure
        self.patterns: set[str] = set()
        self.channels: set[str] = set()
        #: PING tokens sent to mark a point in the stream (``sync``, confirmations), and
        #: the futures waiting for their PONG.
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
                await self._change("PSUBSCRIBE", new)
                self.patterns.update(new)

    async def punsubscribe(self, *patterns: str) -> None:
        async with self._lock():
            gone = [p for p in patterns if p in self.patterns]
            if gone and self._connected():
                self.patterns.difference_update(gone)
                await self._change("PUNSUBSCRIBE", gone)

    async def subscribe(self, *channels: str) -> bool:
        """Subscribe to doorbells; True when something new was subscribed."""
        async with self._lock():
            new = [c for c in channels if c not in self.channels]
            if not new:
                return False
            await self._change("SUBSCRIBE", new)
            self.channels.update(new)
            return True

    async def unsubscribe(self, *channels: str) -> None:
        """Stop listening to channels; once this returns, every message Redis sent on
        them before has been handled."""
        async with self._lock():
            gone = [c for c in channels if c in self.channels]
            if gone and self._connected():
                self.channels.difference_update(gone)
                await self._change("UNSUBSCRIBE", gone)

    def _token(self) -> tuple[bytes, asyncio.Future[None]]:
        self._pings += 1
        token = b"celeriac-sync-%d" % self._pings
        future = asyncio.get_running_loop().create_future()
        self._pongs[token] = future
        return token, future

    def _pong(self, token: bytes) -> None:
        future = self._pongs.pop(token, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _failed(self, exc: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = exc
        for future in self._pongs.values():
            if not future.done():
                future.set_exception(exc)
        self._on_failure(exc)

    async def _change(self, command: str, names: list[str]) -> None:
        raise NotImplementedError

    def _connected(self) -> bool:
        raise NotImplementedError


class Subscriber(_Subscriptions):
    """One redis-py pub/sub connection read by a task until stopped (where a plain
    socket cannot stand in: TLS, Sentinel, options only redis-py knows).

    Args:
        client: The transport's client; the subscriber takes a connection from its pool.
        on_refused: Called with Redis's answer when an ACL refuses an (un)subscription
            (the whole command, which may have named allowed channels too); the other
            subscriptions go on.
    """

    def __init__(
        self,
        client: Redis,
        on_fanout: Callable[[str, bytes], None],
        on_ready: Callable[[str, bytes], None],
        on_failure: Callable[[BaseException], None],
        on_refused: Callable[[BaseException], None],
    ) -> None:
        super().__init__(on_fanout, on_ready, on_failure)
        self._client = client
        self._refused = on_refused
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None

    async def _change(self, command: str, names: list[str]) -> None:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await getattr(self._pubsub, command.lower())(*names)
        if command not in ("PUNSUBSCRIBE", "UNSUBSCRIBE"):
            self._start()

    def _connected(self) -> bool:
        return self._pubsub is not None

    async def sync(self, timeout: float = 5.0) -> None:
        """Return once every message published before this call has been handled.

        Redis writes a PUBLISH into each subscriber's stream before it answers the
        publisher, and answers this connection's PING after whatever it already queued,
        so the PONG marks a point after every earlier fanout message.
        """
        if self._pubsub is None or self._task is None or self._task.done():
            return
        token, future = self._token()
        try:
            await self._pubsub.ping(token)
            async with asyncio.timeout(timeout):
                await future
        finally:
            self._pongs.pop(token, None)

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
                try:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_READ_TIMEOUT
                    )
                except redis_errors.NoPermissionError as exc:
                    # An ACL refused an (un)subscription: redis-py sends them without
                    # reading their answers, so the refusal is read here. Redis refuses
                    # the whole command, and the connection goes on. (A refusal while
                    # reconnecting, in the handshake, leaves no connection: a failure.)
                    connection = pubsub.connection
                    if connection is None or not connection.is_connected:
                        raise
                    self._refused(exc)
                    continue
                if message is None:
                    continue
                kind = message["type"]
                if kind == "pmessage":
                    self._on_fanout(_text(message["channel"]), message["data"])
                elif kind == "message":
                    self._on_ready(_text(message["channel"]), message["data"])
                elif kind == "pong":
                    self._pong(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)

    async def stop(self, close: bool = True) -> None:
        """Stop reading and close the connection (``close`` is for the link subscriber:
        redis-py's pool decides what a forked child's connection does)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


class LinkSubscriber(_Subscriptions):
    """The pub/sub connection as a :class:`PushLink`: hiredis parses each push inside
    the loop's read callback, which calls the transport there and then.

    With redis-py a doorbell went through a reading task (a loop iteration, its
    timeout and parser layers) before it could wake the fetch waiting for it: a slice
    of every idle round trip. (Un)subscriptions go out with a ``PING`` and return once
    its ``PONG`` is back, so Redis has made them by then; an error reply in between
    (an ACL refusing a channel) is raised by the call that caused it. A connection
    silent for ``health_check_interval`` is PINGed, and given up on (reported as lost)
    when that PING or a confirmation goes unanswered.

    Args:
        kwargs: Plain client options (see ``plain_options``).
        db: The database (pub/sub ignores it; credentials and name still apply).
    """

    def __init__(
        self,
        kwargs: Mapping[str, Any],
        db: int,
        on_fanout: Callable[[str, bytes], None],
        on_ready: Callable[[str, bytes], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        super().__init__(on_fanout, on_ready, on_failure)
        self._kwargs = kwargs
        self._db = db
        self._confirm_within = kwargs.get("socket_timeout") or _CONFIRM_TIMEOUT
        self._interval: float = kwargs.get("health_check_interval") or 0.0
        self._link: PushLink | None = None
        self._stopped = False
        #: Tokens of confirmations in flight, oldest first, and the first error reply
        #: that came before each one's PONG.
        self._confirming: deque[bytes] = deque()
        self._errors: dict[bytes, Exception] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._ping_sent: float | None = None

    def _connected(self) -> bool:
        return self._link is not None

    async def _change(self, command: str, names: list[str]) -> None:
        link = self._link
        if link is None:
            self._check_open()
            link = await PushLink.open(self._kwargs, self._db)
            if self._stopped:  # stopped while connecting
                link.close()
                self._check_open()
            link.on_push = self._on_push
            link.on_error = self._on_error
            link.on_lost = self._failed
            self._link = link
            if link.failure is not None:  # lost before it could say so
                self._failed(link.failure)
            if self._interval:
                self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)
        await self._confirm(link, [(command, *names)], self._confirm_within)

    def _check_open(self) -> None:
        if self._stopped:
            raise _closed()

    async def sync(self, timeout: float = 5.0) -> None:
        """Return once every message published before this call has been handled
        (see :meth:`Subscriber.sync`)."""
        link = self._link
        if link is None or self.failure is not None:
            return
        await self._confirm(link, [], timeout)

    async def _confirm(
        self, link: PushLink, commands: list[tuple[Any, ...]], timeout: float
    ) -> None:
        if self.failure is not None:
            raise redis_errors.ConnectionError(f"Redis subscription lost: {self.failure}")
        self._check_open()
        token, future = self._token()
        try:
            link.write([*commands, ("PING", token)])
            self._confirming.append(token)
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            error = redis_errors.TimeoutError(
                f"Redis did not answer a subscription's PING in {timeout}s"
            )
            link.abort(error)  # replies can no longer be matched: reported as lost
            raise error from None
        finally:
            # The token keeps its place in _confirming until its PONG comes (a cancelled
            # call's commands are still on the wire, and so may be an error reply to them)
            self._pongs.pop(token, None)

    def _pong(self, token: bytes) -> None:
        error = None
        if token in self._confirming:
            while True:  # confirmations answer in order; earlier ones were abandoned
                done = self._confirming.popleft()
                error = self._errors.pop(done, None)
                if done == token:
                    break
        future = self._pongs.pop(token, None)
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def _failed(self, exc: BaseException) -> None:
        self._confirming.clear()  # no answer will come on this connection
        self._errors.clear()
        super()._failed(exc)

    def _on_error(self, error: Exception) -> None:
        if not self._confirming:  # nothing of ours asked: the stream cannot be trusted
            if self._link is not None:
                self._link.abort(error)
            return
        self._errors.setdefault(self._confirming[0], error)

    def _on_push(self, reply: Any) -> None:
        if type(reply) is list and reply:
            kind = reply[0]
            if kind == b"pmessage":
                self._on_fanout(_text(reply[2]), reply[3])
            elif kind == b"message":
                self._on_ready(_text(reply[1]), reply[2])
            elif kind == b"pong":
                self._pong(reply[1])
        elif type(reply) is bytes:  # a PING's reply while subscribed to nothing yet
            self._pong(reply)

    def _tick(self) -> None:
        """Every ``health_check_interval``: PING a silent connection; give it up when
        the PING sent last time is still unanswered."""
        self._timer = None
        link = self._link
        if link is None or link.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        sent = self._ping_sent
        if sent is not None and link.last_read >= sent:
            sent = None  # answered (anything read since counts)
        if sent is not None:
            if now - sent >= self._interval:
                link.abort(
                    redis_errors.TimeoutError(
                        f"no answer to a PING within {self._interval}s on the subscription"
                    )
                )
                return
        elif now - link.last_read >= self._interval:
            with contextlib.suppress(redis_errors.ConnectionError):
                link.write([("PING",)])
                sent = now
        self._ping_sent = sent
        self._timer = loop.call_later(self._interval, self._tick)

    async def stop(self, close: bool = True) -> None:
        """Stop reading; calls still waiting for a confirmation fail. ``close=False`` in
        a forked child: closing would unregister the socket from the epoll instance it
        shares with the parent."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._confirming.clear()
        self._errors.clear()
        closed = _closed()
        for future in self._pongs.values():
            if not future.done():
                future.set_exception(closed)
        link, self._link = self._link, None
        if link is not None:
            link.on_lost = None
            link.on_error = None
            link.on_push = _ignore
            if close:
                link.close()


def _closed() -> redis_errors.ConnectionError:
    return redis_errors.ConnectionError("the subscription was closed")


def _ignore(reply: Any) -> None:
    """Pushes that arrive after a subscriber stopped."""


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
