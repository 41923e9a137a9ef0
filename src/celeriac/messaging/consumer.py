"""Consuming: claim in batches, settle in batches, keep leases alive.

The :class:`Consumer` is the worker's path to the broker. It claims as many messages as
the prefetch limit allows in one broker call, hands each to ``on_message``, and collects
the acks and rejects those messages receive (it is their :class:`~.message.Acker`) into
one broker call per event-loop iteration. While it holds a message unsettled it extends
the message's lease every third of the visibility timeout, so a long task or a message
held for its ETA is never redelivered while this process lives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ..exceptions import BrokerConnectionError
from .connection import Connection
from .entities import Queue
from .message import Message
from .transports.base import Transport

__all__ = ["Consumer"]

logger = logging.getLogger("celeriac.messaging")


class Consumer:
    """Claims batches, calls ``on_message`` per message, coalesces settlements, keeps leases.

    Args:
        connection: The connection to consume from (reconnects are transparent).
        queues: Queues to consume; declared when :meth:`run` starts.
        on_message: Called on the loop thread for every delivered message. The message
            must eventually be acked or rejected; until then it counts against
            ``prefetch_count`` and its lease is kept alive.
        prefetch_count: Most messages held unsettled at once (at least 1). Settable
            while running.
        burst: Messages that may be held beyond ``prefetch_count`` (default 0); a
            worker raises it while tasks are short, so it claims in bigger batches.
        fetch_timeout: Longest single wait for messages; :meth:`stop` takes effect
            within this many seconds.
    """

    def __init__(
        self,
        connection: Connection,
        queues: Sequence[Queue],
        on_message: Callable[[Message], None],
        *,
        prefetch_count: int = 100,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.connection = connection
        self.queues: list[Queue] = list(queues)
        self.on_message = on_message
        self.fetch_timeout = fetch_timeout
        self._prefetch_count = _check_prefetch(prefetch_count)
        #: Extra messages that may be held beyond ``prefetch_count`` (see the class doc).
        self.burst = 0
        self._unsettled: dict[Message, None] = {}
        self._acks: list[Message] = []
        self._rejects: list[Message] = []
        self._requeues: list[Message] = []
        self._flush_handle: asyncio.Handle | None = None
        self._flushing: set[asyncio.Task[Any]] = set()
        self._settler: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._running = False
        self._stopping = False

    def __repr__(self) -> str:
        names = ",".join(q.name for q in self.queues)
        return (
            f"<Consumer {names} on {self.connection.as_uri()} "
            f"unsettled={len(self._unsettled)}/{self._prefetch_count}>"
        )

    # -- settings ----------------------------------------------------------------------

    @property
    def prefetch_count(self) -> int:
        return self._prefetch_count

    @prefetch_count.setter
    def prefetch_count(self, value: int) -> None:
        self._prefetch_count = _check_prefetch(value)
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def unsettled(self) -> int:
        """Messages claimed and handed out but not yet acked or rejected."""
        return len(self._unsettled)

    async def add_queue(self, queue: Queue) -> None:
        """Declare ``queue`` and consume from it from the next fetch on."""
        await self.connection.declare(queue)
        if all(q.name != queue.name for q in self.queues):
            self.queues.append(queue)
        if self._wakeup is not None:
            self._wakeup.set()

    def cancel_queue(self, name: str) -> None:
        """Stop consuming from the queue ``name`` (messages already held stay held)."""
        self.queues = [q for q in self.queues if q.name != name]

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Declare the queues, then claim and dispatch until :meth:`stop`.

        Raises:
            BrokerConnectionError: the broker stayed unreachable past the connection's
                ``max_retries``.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        keeper = asyncio.create_task(self._keep_leases(), name="celeriac-lease-keeper")
        try:
            if self.queues:
                await self.connection.declare(*self.queues)
            while not self._stopping:
                await self._step()
        finally:
            keeper.cancel()
            self._running = False

    async def _step(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        wakeup.clear()
        capacity = self._prefetch_count + self.burst - len(self._unsettled)
        names = [q.name for q in self.queues]
        if capacity <= 0 or not names:
            try:
                async with asyncio.timeout(self.fetch_timeout):
                    await wakeup.wait()
            except TimeoutError:
                pass
            return

        async def fetch(transport: Transport) -> list[Message]:
            return await transport.fetch(names, capacity, self.fetch_timeout)

        messages = await self.connection.retrying(fetch)
        if not messages:
            return
        if self._stopping:  # claimed after stop(): nobody will process them
            await self._give_back(messages)
            return
        unsettled = self._unsettled
        for message in messages:
            message.acker = self
            unsettled[message] = None
        on_message = self.on_message
        for message in messages:
            try:
                on_message(message)
            except Exception as exc:
                logger.exception("on_message failed for %r", message)
                if not message.acknowledged:
                    self._quarantine(message, f"consumer callback failed: {exc!r}")

    def stop(self) -> None:
        """Make :meth:`run` return (within ``fetch_timeout`` seconds)."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self, requeue_unsettled: bool = True) -> None:
        """Stop, settle everything pending, and return unsettled messages to their queues.

        With ``requeue_unsettled=False`` the unsettled messages are left to their leases
        (redelivered after the visibility timeout). A message settled after close is not
        sent to the broker: it was returned already.
        """
        self.stop()
        await self.flush()
        held = list(self._unsettled)
        self._unsettled.clear()
        for message in held:
            message.acker = None
        if requeue_unsettled and held:
            await self._give_back(held)

    async def _give_back(self, messages: list[Message]) -> None:
        async def requeue(transport: Transport) -> None:
            await transport.reject(messages, True)

        try:
            await self.connection.retrying(requeue)
        except BrokerConnectionError as exc:
            logger.warning(
                "could not return %d messages to their queues (%s); "
                "they come back when their leases expire",
                len(messages),
                exc,
            )

    def _quarantine(self, message: Message, reason: str) -> None:
        self._unsettled.pop(message, None)
        message.acker = None
        message.reject(requeue=False)  # marks it settled; the quarantine removes it

        async def move(transport: Transport) -> None:
            await transport.quarantine([message], reason)

        self._track(self.connection.retrying(move))

    # -- settlement (the Acker protocol) -----------------------------------------------

    def settle_ack(self, message: Message) -> None:
        if self._unsettled.pop(message, 0) is None:
            self._acks.append(message.settlement())
            self._schedule_flush()

    def settle_reject(self, message: Message, requeue: bool) -> None:
        if self._unsettled.pop(message, 0) is None:
            (self._requeues if requeue else self._rejects).append(message.settlement())
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            loop = self._loop or asyncio.get_running_loop()
            self._flush_handle = loop.call_soon(self._start_flush)
        if self._wakeup is not None:
            self._wakeup.set()

    def _start_flush(self) -> None:
        self._flush_handle = None
        if not (self._acks or self._rejects or self._requeues):
            return
        settler = self._settler
        if settler is None or settler.done():
            self._settler = self._track(self._settle_pending())

    async def _settle_pending(self) -> None:
        """Settle in batches, one broker call at a time: what piles up during a call goes
        in the next one. A call per loop iteration instead, each on its own connection
        while Redis is slow to answer, grew the connection pool to its limit under load
        (and the worker's memory with it)."""
        # Settlements wait for no one, while a result written in the same loop iteration
        # may have a client waiting on it: let that write go out first.
        await asyncio.sleep(0)
        while self._acks or self._rejects or self._requeues:
            acks, rejects, requeues = self._acks, self._rejects, self._requeues
            self._acks, self._rejects, self._requeues = [], [], []
            await self._settle(acks, rejects, requeues)

    def _track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        loop = self._loop or asyncio.get_running_loop()
        task: asyncio.Task[Any] = loop.create_task(coro)
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)
        return task

    async def _settle(
        self, acks: list[Message], rejects: list[Message], requeues: list[Message]
    ) -> None:
        async def settle(transport: Transport) -> None:
            if acks:
                await transport.ack(acks)
            if rejects:
                await transport.reject(rejects, False)
            if requeues:
                await transport.reject(requeues, True)

        try:
            await self.connection.retrying(settle)
        except Exception:
            count = len(acks) + len(rejects) + len(requeues)
            logger.exception(
                "could not settle %d messages; they come back when their leases expire", count
            )

    async def flush(self) -> None:
        """Send every pending settlement now and wait until the broker has them."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._start_flush()
        while self._flushing:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)

    # -- leases ------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        """Extend every held message's lease each third of the visibility timeout."""
        while True:
            timeout = self.connection.transport.visibility_timeout
            await asyncio.sleep(max(timeout / 3.0, 0.01))
            held = list(self._unsettled)
            if not held:
                continue

            async def extend(transport: Transport, held: list[Message] = held) -> None:
                await transport.extend(held, transport.visibility_timeout)

            try:
                await self.connection.retrying(extend)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("could not extend the leases of %d held messages", len(held))


def _check_prefetch(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"prefetch_count must be an integer >= 1, got {value!r} (every claimed message "
            "is held in memory, so the limit cannot be switched off)"
        )
    return value
