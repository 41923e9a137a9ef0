"""One Redis pub/sub connection that every result waiter of a backend shares.

Celery's clients learn about a stored result from the ``PUBLISH`` the writer sends on the
result key's own channel (spec/celery-wire.md section 3.6). Opening a subscription per
waiting call would cost one connection per ``result.get()``; instead a backend owns one
:class:`ResultSubscriber`, which holds a reference count per channel: the first waiter of a
task id sends ``SUBSCRIBE``, the last one to leave sends ``UNSUBSCRIBE``. Requests made in
the same loop iteration go out as one command, so a thousand concurrent waiters cost one
``SUBSCRIBE`` with a thousand channels.

A waiter must not read the stored value before its subscription is in force, or a
``PUBLISH`` landing between the read and the subscription would be missed. So
:meth:`ResultSubscriber.acquire` returns a future that completes when Redis has confirmed
the ``SUBSCRIBE`` that covers the caller (not an earlier one that a pending
``UNSUBSCRIBE`` is about to undo).

When the connection breaks the subscriber reconnects with backoff, subscribes to every
channel still wanted, and once Redis has confirmed them calls ``on_resubscribed`` with
their names, so the owner can re-read every waited key: results published while the
connection was down are found there (spec 3.6, point 4). A caller still waiting for its
subscription when a connection attempt fails gets
:class:`~celeriac.exceptions.ConnectionBrokenError` at once instead of at its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..exceptions import ConnectionBrokenError, ConnectionClosedError

__all__ = ["ResultSubscriber"]

logger = logging.getLogger(__name__)

#: Channels named in one SUBSCRIBE/UNSUBSCRIBE command at most.
_CHUNK = 5000
#: Seconds an UNSUBSCRIBE may wait for a SUBSCRIBE to travel with.
UNSUBSCRIBE_AFTER = 0.5
#: First and largest pause (s) between reconnection attempts.
_BACKOFF_START = 0.05
_BACKOFF_MAX = 2.0

Connect = Callable[[], Awaitable[Any]]


class ResultSubscriber:
    """Reference-counted channel subscriptions on one pub/sub connection.

    Used from one event loop. Channel names and payloads are bytes.

    Args:
        connect: Opens a new, connected redis-py ``Connection`` (its reads must not time
            out: an idle subscription is normal).
        on_message: Called with ``(channel, data)`` for every published message.
        on_resubscribed: Awaited with the channels re-subscribed after a reconnection,
            once Redis has confirmed them.
        errors: Exceptions that mean the connection broke (reconnect and carry on).
        health_check_interval: Seconds of silence after which a ``PING`` is sent; a
            connection that stays silent for another interval is dropped and replaced
            (0 disables the check).
        name: Used in log lines.
    """

    def __init__(
        self,
        connect: Connect,
        on_message: Callable[[bytes, bytes], None],
        on_resubscribed: Callable[[list[bytes]], Awaitable[None]],
        *,
        errors: tuple[type[BaseException], ...],
        health_check_interval: float = 25.0,
        name: str = "redis",
    ) -> None:
        self._connect = connect
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._errors = errors
        self._interval = health_check_interval
        self._name = name
        self._loop = asyncio.get_running_loop()
        #: Waiters per channel; a channel is wanted while its count is positive.
        self._refs: dict[bytes, int] = {}
        #: The last command sent for a channel on the current connection.
        self._sent: dict[bytes, str] = {}
        #: Per channel, one list of futures per SUBSCRIBE sent and not yet confirmed.
        self._inflight: dict[bytes, deque[list[asyncio.Future[None]]]] = {}
        #: Channels whose latest SUBSCRIBE is confirmed (and no UNSUBSCRIBE followed).
        self._confirmed: set[bytes] = set()
        self._to_sub: dict[bytes, list[asyncio.Future[None]]] = {}
        self._to_unsub: set[bytes] = set()
        self._dirty = asyncio.Event()
        self._unsub_timer: asyncio.TimerHandle | None = None
        self._last_read = self._loop.time()
        self._closed: BaseException | None = None
        self._connected_once = False
        self._runner = self._loop.create_task(self._run(), name=f"celeriac-results-sub:{name}")

    def __repr__(self) -> str:
        return f"<ResultSubscriber {self._name} channels={len(self._refs)}>"

    # -- the waiters' side ------------------------------------------------------------------

    def acquire(self, channel: bytes) -> asyncio.Future[None]:
        """Count one more waiter on ``channel``; the future completes once subscribed.

        Every call must be paired with one :meth:`release`, whatever happens to the
        future (cancelled, timed out, failed).
        """
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._closed is not None:
            fut.set_exception(self._closed)
            return fut
        self._refs[channel] = self._refs.get(channel, 0) + 1
        self._to_unsub.discard(channel)
        if self._sent.get(channel) == "sub":
            if channel in self._confirmed:
                fut.set_result(None)
            else:
                self._inflight[channel][-1].append(fut)
        else:
            self._to_sub.setdefault(channel, []).append(fut)
            self._dirty.set()
        return fut

    def release(self, channel: bytes) -> None:
        """One waiter on ``channel`` left; the last one unsubscribes."""
        count = self._refs.get(channel, 0) - 1
        if count > 0:
            self._refs[channel] = count
            return
        self._refs.pop(channel, None)
        if self._closed is not None:
            return
        pending = self._to_sub.pop(channel, None)
        if pending is not None:  # never sent: nothing to undo
            _cancel(pending)
        elif self._sent.get(channel) == "sub":
            # Not sent at once: a sync get() would pay for the UNSUBSCRIBE before it
            # returns. It leaves with the next SUBSCRIBE, or after a pause.
            self._to_unsub.add(channel)
            if self._unsub_timer is None:
                self._unsub_timer = self._loop.call_later(UNSUBSCRIBE_AFTER, self._unsub_due)

    def _unsub_due(self) -> None:
        self._unsub_timer = None
        if self._to_unsub:
            self._dirty.set()

    def channels(self) -> list[bytes]:
        """Channels some waiter currently wants."""
        return list(self._refs)

    async def close(self) -> None:
        """Drop the connection and fail every pending :meth:`acquire`."""
        if self._closed is None:
            self._closed = ConnectionClosedError(f"{self!r} was closed")
        self._runner.cancel()
        if self._unsub_timer is not None:
            self._unsub_timer.cancel()
            self._unsub_timer = None
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        self._fail_pending(self._closed)

    def _fail_pending(self, error: BaseException) -> None:
        for futs in self._to_sub.values():
            _fail(futs, error)
        for queue in self._inflight.values():
            for futs in queue:
                _fail(futs, error)
        self._to_sub.clear()
        self._inflight.clear()

    # -- the connection's side --------------------------------------------------------------

    async def _run(self) -> None:
        delay = _BACKOFF_START
        while self._closed is None:
            try:
                conn = await self._connect()
            except self._errors as exc:
                logger.warning(
                    "result subscriber %s cannot connect (%s); retrying in %.2fs",
                    self._name, exc, delay,
                )
                # Callers not yet subscribed learn now that Redis is unreachable rather
                # than at their timeout; subscribed ones wait on and are re-read later.
                self._fail_pending(
                    ConnectionBrokenError(f"result backend {self._name}: cannot subscribe: {exc}")
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            delay = _BACKOFF_START
            try:
                await self._serve(conn)
            except self._errors as exc:
                if self._closed is None:
                    logger.warning(
                        "result subscriber %s lost its connection (%s); reconnecting",
                        self._name, exc,
                    )
            except Exception:
                # Not a connection failure, but waiters still depend on this loop:
                # log it and start over on a fresh connection rather than die.
                logger.exception("result subscriber %s failed; reconnecting", self._name)
            finally:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
                # Nothing is subscribed any more: new callers queue for the next connection.
                self._forget_subscriptions()
            if self._closed is None:
                await asyncio.sleep(_BACKOFF_START)

    async def _serve(self, conn: Any) -> None:
        """Subscribe what is wanted on a fresh connection, then read until it breaks."""
        resync = self._connected_once
        self._connected_once = True
        self._forget_subscriptions()
        resync_futs: list[asyncio.Future[None]] = []
        if resync:
            for channel in self._refs:
                fut: asyncio.Future[None] = self._loop.create_future()
                self._to_sub[channel].append(fut)
                resync_futs.append(fut)
        self._last_read = self._loop.time()
        tasks = [
            self._loop.create_task(self._read(conn)),
            self._loop.create_task(self._flush(conn)),
        ]
        if self._interval > 0:
            tasks.append(self._loop.create_task(self._check_health(conn)))
        if resync_futs:
            tasks.append(self._loop.create_task(self._resync(list(self._refs), resync_futs)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise the failure that ended this connection
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _forget_subscriptions(self) -> None:
        """Forget the old connection's subscriptions: everything wanted is re-sent."""
        carried: dict[bytes, list[asyncio.Future[None]]] = {}
        for channel, queue in self._inflight.items():
            if channel in self._refs:
                carried.setdefault(channel, []).extend(f for futs in queue for f in futs)
            else:
                for futs in queue:
                    _cancel(futs)
        for channel, futs in self._to_sub.items():
            carried.setdefault(channel, []).extend(futs)
        for channel in self._refs:
            carried.setdefault(channel, [])
        self._to_sub = carried
        self._to_unsub.clear()
        self._sent.clear()
        self._inflight.clear()
        self._confirmed.clear()
        self._dirty.set()

    async def _flush(self, conn: Any) -> None:
        """Send the SUBSCRIBE/UNSUBSCRIBE requests gathered since the last flush."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            subs, self._to_sub = self._to_sub, {}
            unsubs, self._to_unsub = self._to_unsub, set()
            for channel in unsubs:
                self._sent[channel] = "unsub"
                self._confirmed.discard(channel)
            for channel, futs in subs.items():
                self._sent[channel] = "sub"
                self._confirmed.discard(channel)
                self._inflight.setdefault(channel, deque()).append(futs)
            for command, names in (("UNSUBSCRIBE", list(unsubs)), ("SUBSCRIBE", list(subs))):
                for start in range(0, len(names), _CHUNK):
                    chunk = names[start : start + _CHUNK]
                    await conn.send_command(command, *chunk, check_health=False)

    async def _read(self, conn: Any) -> None:
        while True:
            reply = await conn.read_response(push_request=True)
            self._last_read = self._loop.time()
            if not isinstance(reply, list) or not reply:
                continue  # PONG outside subscribed mode
            kind = reply[0]
            if kind == b"message":
                try:
                    self._on_message(reply[1], reply[2])
                except Exception:  # a bad handler must not stop every other waiter
                    logger.exception("result subscriber %s: message handler failed", self._name)
            elif kind == b"subscribe":
                self._on_subscribed(reply[1])
            elif kind == b"unsubscribe":
                channel = reply[1]
                if self._sent.get(channel) == "unsub" and not self._inflight.get(channel):
                    del self._sent[channel]

    def _on_subscribed(self, channel: bytes) -> None:
        queue = self._inflight.get(channel)
        if not queue:
            return
        futs = queue.popleft()
        if not queue:
            del self._inflight[channel]
            if self._sent.get(channel) == "sub":
                self._confirmed.add(channel)
        for fut in futs:
            if not fut.done():
                fut.set_result(None)

    async def _check_health(self, conn: Any) -> None:
        """PING a quiet connection; drop it when even the PING gets no answer."""
        interval = self._interval
        while True:
            await asyncio.sleep(interval)
            if self._loop.time() - self._last_read < interval:
                continue
            sent_at = self._loop.time()
            await conn.send_command("PING", check_health=False)
            await asyncio.sleep(interval)
            if self._last_read < sent_at:
                raise ConnectionResetError(
                    f"no answer to PING within {interval}s on the result subscription"
                )

    async def _resync(self, channels: list[bytes], futs: list[asyncio.Future[None]]) -> None:
        await asyncio.gather(*futs)
        await self._on_resubscribed(channels)


def _cancel(futs: list[asyncio.Future[None]]) -> None:
    for fut in futs:
        fut.cancel()


def _fail(futs: list[asyncio.Future[None]], error: BaseException) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_exception(error)
