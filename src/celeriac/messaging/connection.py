"""A broker connection: URL -> transport, connect with backoff, reconnect transparently.

Producers, consumers and the mailbox never talk to a transport directly when a connection
can break underneath them; they pass an operation to :meth:`Connection.retrying`, which
runs it and, when the transport reports :class:`~celeriac.exceptions.ConnectionBrokenError`,
reconnects with backoff, re-declares every queue and exchange declared through this
connection, runs the ``on_reconnect`` hooks and runs the operation again. Operations are
therefore run at least once: a publish retried after a broken connection may be stored
twice, which at-least-once delivery allows (task ids make duplicates recognisable).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ..exceptions import BrokerConnectionError, ConnectionClosedError
from .entities import Exchange, Queue
from .transports import get_transport_cls
from .transports.base import Transport, mask_url

__all__ = ["Connection"]

T = TypeVar("T")

logger = logging.getLogger("celeriac.messaging")

ReconnectHook = Callable[[], Awaitable[None] | None]


class Connection:
    """One connection to one broker, driven from one event loop.

    Args:
        url: Broker URL; its scheme picks the transport (``sqlite:///celeriac.db``,
            ``memory://``, ``redis://...``, ``amqp://...``).
        transport_options: Passed to the transport (``visibility_timeout``, ...).
        connect_timeout: Seconds one connection attempt may take.
        max_retries: Reconnection attempts before giving up with
            :class:`~celeriac.exceptions.BrokerConnectionError`; ``None`` retries forever,
            ``0`` tries once.
        interval_start: Seconds to wait before the first retry.
        interval_step: Seconds added to the wait after every failed retry.
        interval_max: Longest wait between two retries.

    Raises:
        ConfigurationError: the URL's scheme is unknown or the URL is malformed.
    """

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any] | None = None,
        connect_timeout: float = 4.0,
        max_retries: int | None = 100,
        interval_start: float = 0.1,
        interval_step: float = 0.2,
        interval_max: float = 2.0,
    ) -> None:
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be None (forever) or >= 0, got {max_retries}")
        self.url = url
        self.transport_options: dict[str, Any] = dict(transport_options or {})
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.interval_start = interval_start
        self.interval_step = interval_step
        self.interval_max = interval_max
        self.transport: Transport = get_transport_cls(url)(url, self.transport_options)
        #: Called (and awaited when they return an awaitable) after every reconnect.
        self.on_reconnect: list[ReconnectHook] = []
        self._declared: dict[tuple[str, str], Queue | Exchange] = {}
        self._closed = False
        self._generation = 0
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "disconnected"
        return f"<Connection {self.as_uri()} {state}>"

    def as_uri(self, mask: bool = True) -> str:
        """The broker URL, with the password replaced by ``**`` unless ``mask`` is False."""
        return mask_url(self.url) if mask else self.url

    @property
    def is_connected(self) -> bool:
        return not self._closed and self.transport.is_connected

    @property
    def generation(self) -> int:
        """Bumped by every successful connect; caches keyed on it expire on reconnect."""
        return self._generation

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> Connection:
        """Connect (retrying with backoff) unless connected already.

        Raises:
            BrokerConnectionError: ``max_retries`` retries all failed; the message names
                the masked URL and the last cause, which is chained.
        """
        self._closed = False
        if self.transport.is_connected:
            return self
        async with self._get_lock():
            if not self.transport.is_connected:
                await self._connect_with_retries()
                self._generation += 1
        return self

    async def close(self) -> None:
        """Close the transport; :meth:`retrying` refuses to reconnect from now on."""
        self._closed = True
        await self.transport.close()

    async def __aenter__(self) -> Connection:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _interval(self, attempt: int) -> float:
        return min(self.interval_start + self.interval_step * attempt, self.interval_max)

    async def _connect_with_retries(self) -> None:
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await self.transport.connect()
                return
            except OSError as exc:  # includes BrokerConnectionError and TimeoutError
                if self.max_retries is not None and attempt >= self.max_retries:
                    cause = str(exc) or f"timed out after {self.connect_timeout} s"
                    raise BrokerConnectionError(
                        f"cannot connect to {self.as_uri()}: {cause}"
                    ) from exc
                delay = self._interval(attempt)
                attempt += 1
                logger.warning(
                    "cannot connect to %s: %s; retry %d in %.1f s",
                    self.as_uri(),
                    exc or type(exc).__name__,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

    # -- topology ----------------------------------------------------------------------

    async def declare(self, *entities: Queue | Exchange) -> None:
        """Declare queues and exchanges now, and again after every reconnect."""
        for entity in entities:
            if not isinstance(entity, Queue | Exchange):
                raise TypeError(f"declare() takes Queue and Exchange objects, not {entity!r}")
            kind = "queue" if isinstance(entity, Queue) else "exchange"
            self._declared[(kind, entity.name)] = entity

        async def declare_all(transport: Transport) -> None:
            await _declare_on(transport, entities)

        await self.retrying(declare_all)

    # -- running operations ------------------------------------------------------------

    async def retrying(self, fn: Callable[[Transport], Awaitable[T]]) -> T:
        """Run ``fn(transport)``; on a broken connection reconnect and run it again.

        Raises:
            ConnectionClosedError: this connection was closed with :meth:`close`.
            BrokerConnectionError: reconnecting failed ``max_retries`` times, or ``fn``
                kept failing that many times in a row.
        """
        if self._closed:
            raise ConnectionClosedError(f"connection to {self.as_uri()} is closed")
        if not self.transport.is_connected:
            await self.connect()
        attempt = 0
        while True:
            generation = self._generation
            try:
                return await fn(self.transport)
            except BrokerConnectionError as exc:
                if self._closed:
                    raise ConnectionClosedError(f"connection to {self.as_uri()} is closed") from exc
                if self.max_retries is not None and attempt >= self.max_retries:
                    raise BrokerConnectionError(
                        f"giving up on {self.as_uri()} after {attempt + 1} attempts: {exc}"
                    ) from exc
                if attempt:
                    await asyncio.sleep(self._interval(attempt - 1))
                attempt += 1
                await self._reconnect(generation, exc)

    async def _reconnect(self, generation: int, cause: BaseException) -> None:
        async with self._get_lock():
            if self._generation != generation and self.transport.is_connected:
                return  # another operation reconnected meanwhile
            logger.warning("connection to %s lost (%s); reconnecting", self.as_uri(), cause)
            try:
                await self.transport.close()
            except Exception:  # a broken transport may fail to close; it is discarded anyway
                logger.debug("closing the broken transport failed", exc_info=True)
            await self._connect_with_retries()
            self._generation += 1
            await _declare_on(self.transport, list(self._declared.values()))
        logger.info("reconnected to %s", self.as_uri())
        for hook in list(self.on_reconnect):
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_reconnect hook %r failed", hook)


async def _declare_on(transport: Transport, entities: Any) -> None:
    """Exchanges first, so queues bound to them find them."""
    for entity in entities:
        if isinstance(entity, Exchange):
            await transport.declare_exchange(entity)
    for entity in entities:
        if isinstance(entity, Queue):
            await transport.declare_queue(entity)
