"""One asyncio connection to Redis for the hot path: commands pipelined, replies by hiredis.

Through redis-py's asyncio client a call costs about 140 us of this process's CPU on top
of the round trip on a small machine: a connection taken from and given back to the pool,
the retry and observability layers, a command packer written in Python and several loop
iterations per reply. An idle worker makes a claim, a result write and an ack per task,
so that overhead was most of a round trip's latency. A :class:`Link` packs commands with
hiredis, keeps them in flight on one socket in order, and resolves each caller's future
from ``data_received``.

It carries only what is plain (no TLS, no Sentinel, options it knows: see
:func:`plain_options`); anything else stays on redis-py. Its failures are redis-py's
exceptions (``ConnectionError``, ``TimeoutError``, ``ResponseError`` and the subclasses
redis-py gives an error reply), so callers map errors and reconnect as before.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis import exceptions as redis_errors

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    hiredis = None

try:
    from redis._parsers.base import BaseParser

    _parse_error = BaseParser.parse_error
except (ImportError, AttributeError):  # pragma: no cover - another redis-py layout

    def _parse_error(response: str) -> Exception:
        return redis_errors.ResponseError(response)


__all__ = ["Link", "PushLink", "plain_options", "setup_commands"]

#: redis-py client options these connections honour; any other one means "use redis-py".
_HONOURED = frozenset(
    {
        "host",
        "db",
        "port",
        "unix_socket_path",
        "username",
        "password",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "client_name",
        "max_connections",
        "health_check_interval",
        "retry_on_timeout",
    }
)


def plain_options(kwargs: Mapping[str, Any]) -> bool:
    """Whether a plain socket speaking RESP can stand in for redis-py with these client
    options: hiredis is there, no TLS, and no option that only redis-py knows."""
    return (
        hiredis is not None
        and hasattr(hiredis, "pack_command")
        and not kwargs.get("ssl")
        and not set(kwargs) - _HONOURED
    )


def setup_commands(kwargs: Mapping[str, Any], db: int) -> list[tuple[Any, ...]]:
    """What a new connection sends first: credentials, database, name."""
    setup: list[tuple[Any, ...]] = []
    if kwargs.get("password") is not None:
        user = kwargs.get("username")
        setup.append(("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"]))
    if db:
        setup.append(("SELECT", db))
    if kwargs.get("client_name"):
        setup.append(("CLIENT", "SETNAME", kwargs["client_name"]))
    return setup


class Link(asyncio.Protocol):
    """Commands in flight in order on one connection; each call's future gets its replies.

    A call that waits longer than ``socket_timeout`` closes the link (the replies behind
    it can no longer be matched): every pending call fails with ``TimeoutError`` and the
    owner reconnects. A cancelled caller's replies are read and dropped.
    """

    def __init__(self, timeout: float | None) -> None:
        self._reader = hiredis.Reader()
        #: [future, replies still to read, replies read, when sent]
        self._pending: collections.deque[list[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._timeout = timeout
        self._watch: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.failure: BaseException | None = None

    @classmethod
    async def open(cls, kwargs: Mapping[str, Any], db: int) -> Link:
        """Connect and send the setup commands (raises redis-py's errors)."""
        loop = asyncio.get_running_loop()
        timeout = kwargs.get("socket_connect_timeout")
        path = kwargs.get("unix_socket_path")
        try:
            async with asyncio.timeout(timeout):
                if path is not None:
                    transport, link = await loop.create_unix_connection(
                        lambda: cls(kwargs.get("socket_timeout")), path
                    )
                else:
                    transport, link = await loop.create_connection(
                        lambda: cls(kwargs.get("socket_timeout")), kwargs["host"], kwargs["port"]
                    )
        except TimeoutError as exc:
            raise redis_errors.TimeoutError(f"connecting to Redis timed out: {exc}") from exc
        except OSError as exc:
            raise redis_errors.ConnectionError(f"cannot connect to Redis: {exc}") from exc
        if kwargs.get("socket_keepalive"):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        setup = setup_commands(kwargs, db)
        try:
            if setup:
                for reply in await link.pipeline(setup):
                    if isinstance(reply, Exception):
                        raise reply
        except BaseException:
            link.close()
            raise
        return link

    @property
    def closed(self) -> bool:
        return self._transport is None or self.failure is not None

    async def call(self, *command: Any) -> Any:
        """One command's reply; an error reply raises."""
        reply = (await self.pipeline((command,)))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The commands' replies in one write, an error reply as its exception in place."""
        replies = await self._send(commands)
        return [_parse_error(str(r)) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    async def evalsha(self, sha: str, source: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a script by its digest, sending its source once if Redis lost it."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await self.call("EVAL", source, len(keys), *keys, *args)

    def _send(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        entry = [future, len(commands), [], self._loop.time()]
        self._write(commands)
        self._pending.append(entry)
        if self._watch is None and self._timeout is not None:
            self._watch = self._loop.call_later(self._timeout, self._check_timeout)
        return future

    def _write(self, commands: Sequence[Sequence[Any]]) -> None:
        """Pack the commands with hiredis and send them in one write."""
        transport = self._transport
        if transport is None or self.failure is not None:
            raise redis_errors.ConnectionError(f"Redis connection lost: {self.failure}")
        pack = hiredis.pack_command
        transport.write(b"".join([pack(tuple(c)) for c in commands]))

    def _check_timeout(self) -> None:
        self._watch = None
        if not self._pending or self._timeout is None:
            return
        waited = self._loop.time() - self._pending[0][3]
        if waited >= self._timeout:
            self._fail(redis_errors.TimeoutError(f"Redis did not answer in {self._timeout}s"))
        else:
            self._watch = self._loop.call_later(self._timeout - waited, self._check_timeout)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            pending = self._pending
            while pending:
                reply = reader.gets()
                if reply is False:
                    return
                entry = pending[0]
                entry[2].append(reply)
                entry[1] -= 1
                if entry[1] == 0:
                    pending.popleft()
                    future = entry[0]
                    if not future.done():
                        future.set_result(entry[2])
            if reader.gets() is not False:
                self._fail(redis_errors.ConnectionError("Redis sent a reply nobody asked for"))
        except hiredis.ProtocolError as exc:
            self._fail(redis_errors.ConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis_errors.ConnectionError(f"Redis closed the connection: {exc or 'EOF'}"))
        self._transport = None

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        pending, self._pending = self._pending, collections.deque()
        for entry in pending:
            if not entry[0].done():
                entry[0].set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close now; calls still waiting fail with ``ConnectionError``."""
        self._fail(redis_errors.ConnectionError("the connection was closed"))
        self._transport = None

    def abort(self, error: BaseException) -> None:
        """Give up on the connection: calls still waiting fail with ``error``."""
        self._fail(error)


class PushLink(Link):
    """A :class:`Link` whose connection is subscribed: once :attr:`on_push` is set,
    every reply is a push (a message, a subscription's confirmation, a ``PONG``) and goes
    to it as it is read, within the loop's read callback.

    An error reply goes to :attr:`on_error` (it answers a command its owner sent), or
    fails the connection where there is none. A failure (the connection lost, a protocol
    error, ``on_push`` raising) is reported once to :attr:`on_lost`; :meth:`close`
    reports nothing. :attr:`last_read` (loop time) lets the owner notice silence.
    """

    def __init__(self, timeout: float | None) -> None:
        super().__init__(timeout)
        self.on_push: Callable[[Any], None] | None = None
        self.on_error: Callable[[Exception], None] | None = None
        self.on_lost: Callable[[BaseException], None] | None = None
        self.last_read = self._loop.time()

    def write(self, commands: Sequence[Sequence[Any]]) -> None:
        """Send commands whose replies come as pushes."""
        self._write(commands)

    def data_received(self, data: bytes) -> None:
        on_push = self.on_push
        if on_push is None:  # still setting up: replies answer calls
            super().data_received(data)
            return
        self.last_read = self._loop.time()
        reader = self._reader
        try:
            reader.feed(data)
            while self.failure is None and (reply := reader.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    error = _parse_error(str(reply))
                    if self.on_error is None:
                        raise error
                    self.on_error(error)
                    continue
                on_push(reply)
        except hiredis.ProtocolError as exc:
            self._fail(redis_errors.ConnectionError(f"Redis protocol error: {exc}"))
        except Exception as exc:
            self._fail(exc)

    def _fail(self, error: BaseException) -> None:
        first = self.failure is None
        super()._fail(error)
        on_lost, self.on_lost = self.on_lost, None
        if first and on_lost is not None:
            on_lost(error)

    def close(self) -> None:
        self.on_lost = None
        super().close()
