"""Blocking Redis connections for ``delay()`` called from sync code.

Sync callers (web views, scripts) send one task per call and wait for Redis's reply, so
each call is one round trip. Run through the event loop and redis-py's asyncio client, a
call costs about three times the round trip itself (loop start and stop, the client's
connection pool, retry and health-check layers). A plain socket that speaks RESP with
hiredis (redis-py's own C parser) costs little more than the round trip, and the reply
still comes back before ``delay()`` returns: sent still means Redis holds the message.

This path only ever *tries*: whatever it cannot do plainly (TLS, Sentinel, a broken
socket, an error reply) it reports as not done, and the caller takes the async path,
which owns reconnecting with backoff, re-declaring queues and turning errors into
celeriac's. A socket that broke after Redis ran the command means the async retry stores
the message a second time, which at-least-once delivery allows (the async path's own
retries do the same).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    hiredis = None

from ._redis_link import plain_options, setup_commands

__all__ = ["SyncPublisher", "open_link", "shorter"]


class _Link:
    """One blocking connection: a socket and its reply parser."""

    __slots__ = ("reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = hiredis.Reader()

    def call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands in one write and return their replies (an error reply comes
        back as a value)."""
        self.send(commands)
        return [self.read() for _ in commands]

    def send(self, commands: Sequence[Sequence[Any]]) -> None:
        self.sock.sendall(b"".join([hiredis.pack_command(tuple(c)) for c in commands]))

    def poll_for(self, seconds: float) -> bool:
        """Take what Redis sends within ``seconds`` without sleeping; True if anything
        came. For a socket with kernel timeouts only (a Python-level timeout would make
        each receive wait). Between polls the CPU is offered to whatever else is ready
        on it: on a small host the worker and Redis, whom this call is waiting for."""
        sock = self.sock
        clock = time.perf_counter
        yield_cpu = os.sched_yield
        end = clock() + seconds
        while True:
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if clock() >= end:
                    return False
                yield_cpu()
                continue
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            self.reader.feed(data)
            return True

    def read(self) -> Any:
        reader = self.reader
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


#: Polling needs both (neither exists on Windows).
_CAN_POLL = hasattr(socket, "MSG_DONTWAIT") and hasattr(os, "sched_yield")
#: Polls in a row that ended before Redis's reply came, after which polling stops...
_SPIN_MISSES = 8
#: ... for this many seconds (then it is tried again).
_SPIN_PAUSE = 10.0


class SyncPublisher:
    """Runs the publishing scripts over blocking connections, one per concurrent caller.

    Idle connections wait in a list: ``pop`` and ``append`` are atomic, so threads share
    it without a lock.

    Waiting for the reply, a call first polls the socket for ``spin`` seconds (100 us by
    default) and only then sleeps in ``recv``. On a virtual machine a process that
    sleeps gives its CPU back to the host, and waking it again cost more than Redis
    took to answer on loopback: polling made one-at-a-time ``delay()`` 15-35% faster
    here, for no more CPU per call (the sleeping version spent ~100 us of CPU a call
    too, in waking up). Polling is bounded, never used with one CPU (Redis would need
    that CPU to answer) nor where the caller says not to (``poll=False``: a push that
    may wake a worker on this host), and stops for :data:`_SPIN_PAUSE` seconds after
    :data:`_SPIN_MISSES` polls in a row that Redis did not answer in time (a remote
    or busy Redis), so it costs nothing where it cannot help.
    """

    def __init__(
        self,
        kwargs: Mapping[str, Any],
        db: int,
        scripts: Mapping[str, tuple[str, str]],
        spin: float = 0.0,
    ) -> None:
        self._kwargs = dict(kwargs)
        self._db = db
        #: Script name -> (source, SHA1).
        self._scripts = dict(scripts)
        self._idle: list[_Link] = []
        self._open = 0
        self._limit = int(self._kwargs.get("max_connections") or 50)
        self._spin = spin if _cpus() > 1 and _CAN_POLL else 0.0
        self._misses = 0
        self._spin_paused_until = 0.0

    @classmethod
    def for_client(
        cls,
        kwargs: Mapping[str, Any],
        db: int,
        scripts: Mapping[str, tuple[str, str]],
        spin: float = 0.0,
    ) -> SyncPublisher | None:
        """A publisher for these redis-py client options, or None when one of them (TLS,
        an option this path does not know) needs redis-py."""
        return cls(kwargs, db, scripts, spin) if plain_options(kwargs) else None

    def run_script(self, name: str, args: Sequence[Any], poll: bool = True) -> Any:
        """Run script ``name`` with ``args``; its reply once Redis replied that it ran.

        None means nothing is known to be stored and the caller must take the async
        path: no connection could be had, the connection broke, or Redis answered with
        an error (which the async path raises as celeriac's error). ``poll`` as for
        :meth:`run`.
        """
        source, sha = self._scripts[name]
        replies = self.run(
            (("EVALSHA", sha, 0, *args),), fallback=("EVAL", source, 0, *args), poll=poll
        )
        return None if replies is None else replies[0]

    def run(
        self,
        commands: Sequence[Sequence[Any]],
        fallback: Sequence[Any] | None = None,
        poll: bool = True,
    ) -> list[Any] | None:
        """Send ``commands`` in one write; their replies once Redis answered them all.
        None as for :meth:`run_script` (the first command's error reply included);
        ``fallback`` replaces a first command Redis answers ``NOSCRIPT``. ``poll=False``
        sleeps in ``recv`` at once: for a call that wakes another process on this host
        (a worker a message is handed to), which needs the CPU a poll would hold."""
        try:
            link = self._idle.pop()
        except IndexError:
            link = self._connect()
            if link is None:
                return None
        # No fork check here: a forked child's sync calls find a new loop (utils.portal
        # checks the pid), so a new connection, transport and publisher of their own.
        try:
            link.send(commands)
            if poll and self._spin and link.sock.gettimeout() is None:
                self._poll(link)
            replies = [link.read() for _ in commands]  # all, or the next call reads them
            if fallback is not None and _no_script(replies[0]):
                replies[0] = link.call((fallback,))[0]
        except (OSError, hiredis.ProtocolError):
            self._discard(link)
            return None
        except BaseException:  # Ctrl-C mid-reply: the link's state is unknown
            self._discard(link)
            raise
        self._idle.append(link)
        return None if isinstance(replies[0], hiredis.ReplyError) else replies

    def _poll(self, link: _Link) -> None:
        if self._misses >= _SPIN_MISSES:
            if time.monotonic() < self._spin_paused_until:
                return
            self._misses = 0
        if link.poll_for(self._spin):
            self._misses = 0
            return
        self._misses += 1
        if self._misses >= _SPIN_MISSES:
            self._spin_paused_until = time.monotonic() + _SPIN_PAUSE

    def close(self) -> None:
        """Close the idle connections (one in use closes when its call returns None)."""
        idle, self._idle = self._idle, []
        for link in idle:
            self._discard(link)

    def _discard(self, link: _Link) -> None:
        self._open -= 1
        link.close()

    def _connect(self) -> _Link | None:
        if self._open >= self._limit:
            return None  # the async path's pool waits for a free connection
        link = open_link(self._kwargs, self._db)
        if link is not None:
            self._open += 1
        return link


def open_link(
    kwargs: Mapping[str, Any], db: int, *, kernel_timeouts: bool = True, limit: float | None = None
) -> _Link | None:
    """A blocking connection that took the setup commands, or None (cannot connect, or
    Redis refused the credentials: the async path says which). ``kernel_timeouts=False``
    bounds sends and receives with Python's socket timeout instead, for a caller that
    changes it from one read to the next; ``limit`` (seconds) then also bounds
    connecting and the setup."""
    try:
        path = kwargs.get("unix_socket_path")
        timeout = shorter(kwargs.get("socket_connect_timeout"), limit)
        if path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        else:
            sock = socket.create_connection((kwargs["host"], kwargs["port"]), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kwargs.get("socket_keepalive"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if kernel_timeouts:
            _set_timeout(sock, kwargs.get("socket_timeout"))
        else:
            sock.settimeout(shorter(kwargs.get("socket_timeout"), limit))
    except OSError:
        return None
    link = _Link(sock)
    setup = setup_commands(kwargs, db)
    try:
        if setup and any(isinstance(r, hiredis.ReplyError) for r in link.call(setup)):
            link.close()
            return None
    except (OSError, hiredis.ProtocolError):
        link.close()
        return None
    except BaseException:  # Ctrl-C during the setup: no socket left behind
        link.close()
        raise
    return link


def shorter(a: float | None, b: float | None) -> float | None:
    """The shorter of two timeouts, None being no timeout."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _no_script(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


def _set_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Bound blocking sends and receives by the kernel (``SO_SNDTIMEO``/``SO_RCVTIMEO``)
    rather than by Python's socket timeout, which polls before every send and receive:
    two more system calls a publish. A timed-out call raises an OSError either way."""
    if seconds is None:
        sock.settimeout(None)
        return
    try:
        whole = int(seconds)
        timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    except (OSError, struct.error):
        sock.settimeout(seconds)  # no kernel timeouts here: Python's, with their polls
