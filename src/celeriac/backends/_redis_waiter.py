"""``AsyncResult.get()`` from sync code over a blocking connection (Redis 6 and later).

A sync caller is blocked while it waits anyway, yet through the event loop a ``get()``
cost about 400 us of CPU here even for a result already stored: a dozen loop iterations,
a task, redis-py's pub/sub and pool layers. On a small machine that CPU is taken from the
worker and from Redis, so it lengthened every ``delay().get()`` round trip.

Here one RESP3 connection carries the subscription and the reads: ``SUBSCRIBE <key>`` and
``GET <key>`` go in one write and Redis runs them in that order, so a result written
before the subscription is found by the ``GET`` and one written after it arrives as a
message. Leaving a channel (``UNSUBSCRIBE``) waits to go out with the next wait's write.

Replies are matched by order: a wait reads everything it asked for (the ``GET``'s reply,
a health-check ``PONG``) before its connection is used again, and takes messages only
after its own subscription is confirmed, so a message left over from an earlier wait on
the same connection is never taken for this one's.

As with the blocking publisher, this path only ever *tries*: no connection, a broken one,
a Redis without RESP3, anything unusual, and the caller waits through the event loop,
which reconnects and raises celeriac's errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..messaging.transports._redis_sync import hiredis, open_link, shorter

__all__ = ["FALLBACK", "SyncWaiter"]

#: A wait that could not be made here: wait through the event loop instead.
FALLBACK: Any = object()

#: The name these connections take in ``CLIENT LIST`` unless ``client_name`` is set.
CLIENT_NAME = "celeriac-result-wait"

#: Seconds past the caller's deadline a reply Redis owes is still waited for.
_GRACE = 1.0


class _Conn:
    """A RESP3 connection, the channel it still has to leave, and the ``PONG`` replies
    still owed to it (read before anything else it is sent)."""

    __slots__ = ("leave", "link", "pongs")

    def __init__(self, link: Any) -> None:
        self.link = link
        self.leave: bytes | None = None
        self.pongs = 0


class SyncWaiter:
    """Blocking waits for result keys, one connection per concurrent caller.

    Idle connections wait in a list (``pop`` and ``append`` are atomic, so threads share
    it without a lock).
    """

    def __init__(
        self,
        kwargs: Mapping[str, Any],
        db: int,
        health_check_interval: float,
        max_connections: int,
    ) -> None:
        self._kwargs = dict(kwargs)
        #: Named by HELLO (so a user who may not run CLIENT keeps this path).
        self._name = self._kwargs.pop("client_name", None) or CLIENT_NAME
        self._db = db
        self._check_every = health_check_interval or None
        # A reply owed longer than this (a health-check interval, at least a second)
        # means a dead peer, however socket_timeout is set.
        bound = None if self._check_every is None else max(self._check_every, 1.0)
        self._io_timeout: float | None = shorter(kwargs.get("socket_timeout"), bound)
        self._idle: list[_Conn] = []
        self._open = 0
        self._limit = max_connections
        self._closed = False
        #: Redis does not know HELLO (before 6.0) or this user may not run it.
        self._no_resp3 = False

    def wait(
        self, key: bytes, timeout: float | None, decode: Callable[[bytes | None], Any]
    ) -> Any:
        """The decoded value of ``key`` once ``decode`` says it is ready, the last value
        read when ``timeout`` ran out first, or :data:`FALLBACK`.

        ``decode`` returns ``(value, ready)``.
        """
        if self._no_resp3 or self._closed:
            return FALLBACK
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._connect(deadline)
            if conn is None:
                return FALLBACK
        try:
            value = self._wait(conn, key, deadline, decode)
        except _Late as late:
            self._discard(conn)
            # Redis did not answer in time: not ready in time, in the last state read
            return decode(None)[0] if late.value is None else late.value
        except (OSError, hiredis.ProtocolError, _Broken):
            self._discard(conn)
            return FALLBACK
        except BaseException:  # Ctrl-C mid-reply: the connection's state is unknown
            self._discard(conn)
            raise
        if self._closed:
            self._discard(conn)
        else:
            self._idle.append(conn)
        return value

    def close(self) -> None:
        """Close the idle connections; one in use closes when its wait ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    def _discard(self, conn: _Conn) -> None:
        self._open -= 1
        conn.link.close()

    def _read_timeout(self, deadline: float | None) -> float | None:
        """How long a reply Redis owes is waited for: ``socket_timeout``, and no more
        than the caller's time left (and a grace)."""
        if deadline is None:
            return self._io_timeout
        return shorter(max(deadline - time.monotonic(), 0.0) + _GRACE, self._io_timeout)

    def _wait(
        self,
        conn: _Conn,
        key: bytes,
        deadline: float | None,
        decode: Callable[[bytes | None], Any],
    ) -> Any:
        link = conn.link
        sock = link.sock
        commands: list[tuple[Any, ...]] = []
        if conn.leave is not None:
            commands.append(("UNSUBSCRIBE", conn.leave))
        commands += [("SUBSCRIBE", key), ("GET", key)]
        conn.leave = key
        sock.settimeout(self._read_timeout(deadline))
        link.send(commands)
        subscribed = False  # messages count once Redis confirmed this wait's SUBSCRIBE
        got_reply = False  # the GET's reply has been read
        value: Any = None
        ready = False
        while True:
            if got_reply and conn.pongs == 0:
                if ready:
                    return value
                # Nothing owed: wait for a message, PINGing a silent connection.
                wait = self._check_every
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return value
                    wait = left if wait is None else min(wait, left)
                sock.settimeout(wait)
                try:
                    reply = link.read()  # a socket timeout raises TimeoutError
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        return value
                    sock.settimeout(self._read_timeout(deadline))
                    link.send((("PING",),))
                    conn.pongs += 1
                    continue
            else:
                sock.settimeout(self._read_timeout(deadline))
                try:
                    reply = link.read()  # a socket timeout raises TimeoutError
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise _Late(value) from None
                    raise
            if isinstance(reply, hiredis.ReplyError):
                raise _Broken(str(reply))
            if isinstance(reply, list):  # a push: subscribe, unsubscribe, message
                kind = reply[0] if reply else None
                if kind == b"subscribe" and len(reply) == 3 and reply[1] == key:
                    subscribed = True
                elif (
                    kind == b"message" and subscribed and not ready
                    and len(reply) == 3 and reply[1] == key
                ):  # fmt: skip
                    value, ready = decode(reply[2])
                continue
            if conn.pongs:  # replies come in order: owed PONGs precede this GET's reply
                conn.pongs -= 1
                continue
            if got_reply:
                raise _Broken(f"unexpected reply {reply!r}")
            got_reply = True
            if not ready:
                value, ready = decode(reply)

    def _connect(self, deadline: float | None) -> _Conn | None:
        if self._open >= self._limit:
            return None  # the loop's path waits for a free connection
        self._open += 1  # the slot is taken before the (blocking) connect
        try:
            link = open_link(
                self._kwargs, self._db, kernel_timeouts=False, limit=self._read_timeout(deadline)
            )
        except BaseException:  # Ctrl-C while connecting
            self._open -= 1
            raise
        if link is None:
            self._open -= 1
            return None
        conn = _Conn(link)
        try:
            reply = link.call((("HELLO", "3", "SETNAME", self._name),))[0]
            if isinstance(reply, hiredis.ReplyError) and _refused_name(str(reply)):
                reply = link.call((("HELLO", "3"),))[0]  # unnamed, then
        except (OSError, hiredis.ProtocolError):
            self._discard(conn)
            return None
        except BaseException:
            self._discard(conn)
            raise
        if isinstance(reply, hiredis.ReplyError):
            text = str(reply)
            if "unknown command" in text.lower() or text.startswith("NOPERM"):
                self._no_resp3 = True
            self._discard(conn)
            return None
        return conn


def _refused_name(error: str) -> bool:
    """An ``ERR`` for HELLO's SETNAME (a name Redis refuses, a server or proxy without
    that option), rather than for HELLO itself or a passing state (LOADING, BUSY)."""
    return error.startswith("ERR") and "unknown command" not in error.lower()


class _Broken(Exception):
    """The connection cannot be trusted any more."""


class _Late(Exception):
    """Redis did not answer by the caller's deadline (and its grace)."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

