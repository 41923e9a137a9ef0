"""Coalescing writes: everything one loop iteration produces goes out in one call.

Results, retry messages and callbacks produced while the loop handles a burst of
completions are written with one backend or broker call at the end of that iteration,
instead of one round trip each. Writes are serialised (a flush waits for the previous one),
so order is kept, and each item may carry an ``after`` callback run once its write is
done: late acks hang off that, so a message is acked only after its result is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["CoalescingWriter"]

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Attempts, and the pause between them (s), before a failed write is given up on.
WRITE_ATTEMPTS = 5
WRITE_RETRY_PAUSE = 0.5


class CoalescingWriter(Generic[T]):
    """Batches items added in one loop iteration into one ``write(items)`` call."""

    def __init__(self, name: str, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self.name = name
        self._write = write
        self._items: list[T] = []
        self._afters: list[Callable[[], None]] = []
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, item: T, after: Callable[[], None] | None = None) -> None:
        self._items.append(item)
        if after is not None:
            self._afters.append(after)
        self._schedule()

    def after(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything added so far is written."""
        if not self._items and self._idle.is_set():
            callback()
            return
        self._afters.append(callback)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._idle.clear()
            self._start()

    def _start(self) -> None:
        # A new task's first step runs in the next loop iteration, so whatever the rest
        # of this iteration adds still joins the same write, without a call_soon's extra
        # iteration before it (a client may be waiting for the result being written).
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self._items or self._afters:
            self._scheduled = False
            items, self._items = self._items, []
            afters, self._afters = self._afters, []
            if items:
                await self._write_with_retry(items)
            for callback in afters:
                try:
                    callback()
                except Exception:
                    logger.exception("%s: callback after write failed", self.name)
        self._scheduled = False
        self._idle.set()

    async def _write_with_retry(self, items: list[T]) -> None:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                await self._write(items)
                return
            except Exception as exc:
                if attempt == WRITE_ATTEMPTS:
                    logger.error(
                        "%s: giving up on writing %d item(s) after %d attempts: %r",
                        self.name,
                        len(items),
                        attempt,
                        exc,
                        exc_info=True,
                    )
                    return
                logger.warning("%s: write failed (%r); retrying", self.name, exc)
                await asyncio.sleep(WRITE_RETRY_PAUSE * attempt)

    async def flush(self) -> None:
        """Wait until everything added so far is written and its callbacks have run."""
        if self._items or self._afters:
            self._schedule()
            self._start()
        await self._idle.wait()
