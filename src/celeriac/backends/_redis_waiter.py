"""``AsyncResult.get()`` from sync code over a blocking connection (Redis 6 and later).

A sync caller is blocked while it waits anyway, yet through the event loop a ``get()``
cost about 400 us of CPU here even for a result already stored: a dozen loop iterations,
a task, redis-py's pub/sub and pool layers. On a small machine that CPU is taken from the
worker and from Redis, so it lengthened every ``delay().get()`` round trip.

Here one RESP3 connection carries the subscription and the reads: ``SUBSCRIBE <key>`` and
``GET <key>`` go in one write and Redis runs them in that order, so a result written
before the subscription is found by the ``GET`` and one written after it arrives as a
message. Leaving a channel (``UNSUBSCRIBE``) waits to go out with the next wait's write.

As with the blocking publisher, this path only ever *tries*: no connection, a broken one,
a Redis without RESP3, anything unusual, and the caller waits through the event loop,
which reconnects and raises celeriac's errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..messaging.transports._redis_sync import hiredis, open_link

__all__ = ["SyncWaiter"]

#: A wait that could not be made here: wait through the event loop instead.
FALLBACK: Any = object()


class _Conn:
    """A RESP3 connection and the channel it still has to leave."""

    __slots__ = ("leave", "link")

    def __init__(self, link: Any) -> None:
        self.link = link
        self.leave: bytes | None = None


class SyncWaiter:
    """Blocking waits for result keys, one connection per concurrent caller.

    Idle connections wait in a list (``pop`` and ``append`` are atomic, so threads share
    it without a lock).
    """

    def __init__(self, kwargs: Mapping[str, Any], db: int, health_check_interval: float) -> None:
        self._kwargs = dict(kwargs)
        self._db = db
        self._check_every = health_check_interval or None
        self._io_timeout = kwargs.get("socket_timeout")
        self._idle: list[_Conn] = []
        #: Redis answered HELLO 3 with an error (before 6.0): never try again.
        self._no_resp3 = False

    def wait(
        self, key: bytes, timeout: float | None, decode: Callable[[bytes | None], Any]
    ) -> Any:
        """The decoded value of ``key`` once ``decode`` says it is ready, the last value
        read when ``timeout`` ran out first, or :data:`FALLBACK`.

        ``decode`` returns ``(value, ready)``.
        """
        if self._no_resp3:
            return FALLBACK
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._connect()
            if conn is None:
                return FALLBACK
        try:
            value = self._wait(conn, key, timeout, decode)
        except (OSError, hiredis.ProtocolError, _Broken):
            conn.link.close()
            return FALLBACK
        except BaseException:  # Ctrl-C mid-reply: the connection's state is unknown
            conn.link.close()
            raise
        self._idle.append(conn)
        return value

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.link.close()

    def _wait(
        self, conn: _Conn, key: bytes, timeout: float | None, decode: Callable[[bytes | None], Any]
    ) -> Any:
        link = conn.link
        sock = link.sock
        commands: list[tuple[Any, ...]] = []
        if conn.leave is not None:
            commands.append(("UNSUBSCRIBE", conn.leave))
        commands += [("SUBSCRIBE", key), ("GET", key)]
        conn.leave = key
        sock.sendall(b"".join([hiredis.pack_command(c) for c in commands]))
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        value: Any = None
        read_get = False
        pinged = False
        while True:
            reply = _next_reply(link)
            if reply is _NOTHING:
                if not read_get:  # the GET's reply is due before anything else
                    sock.settimeout(self._io_timeout)
                    reply = _read_blocking(link)
                else:
                    wait = self._check_every
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return value
                        wait = left if wait is None else min(wait, left)
                    sock.settimeout(wait)
                    try:
                        reply = _read_blocking(link)
                    except TimeoutError:
                        if deadline is not None and time.monotonic() >= deadline:
                            return value
                        if pinged:  # no answer to the last PING either: a dead peer
                            raise _Broken from None
                        sock.settimeout(self._io_timeout)
                        sock.sendall(hiredis.pack_command(("PING",)))
                        pinged = True
                        continue
            if isinstance(reply, hiredis.ReplyError):
                raise _Broken(str(reply))
            if isinstance(reply, list):  # a push: subscribe, unsubscribe, message
                if len(reply) == 3 and reply[0] == b"message" and reply[1] == key:
                    value, ready = decode(reply[2])
                    if ready:
                        return value
                continue
            if not read_get:
                read_get = True
                value, ready = decode(reply)
                if ready:
                    return value
                continue
            pinged = False  # PONG

    def _connect(self) -> _Conn | None:
        link = open_link(self._kwargs, self._db, kernel_timeouts=False)
        if link is None:
            return None
        try:
            reply = link.call((("HELLO", "3"),))[0]
        except (OSError, hiredis.ProtocolError):
            link.close()
            return None
        if isinstance(reply, hiredis.ReplyError):
            self._no_resp3 = True
            link.close()
            return None
        return _Conn(link)


class _Broken(Exception):
    """The connection cannot be trusted any more."""


_NOTHING: Any = object()


def _next_reply(link: Any) -> Any:
    reply = link.reader.gets()
    return _NOTHING if reply is False else reply


def _read_blocking(link: Any) -> Any:
    """The next reply, reading from the socket as needed (its timeout applies)."""
    reader = link.reader
    while True:
        reply = reader.gets()
        if reply is not False:
            return reply
        data = link.sock.recv(65536)  # a timeout raises TimeoutError
        if not data:
            raise ConnectionResetError("Redis closed the connection")
        reader.feed(data)
