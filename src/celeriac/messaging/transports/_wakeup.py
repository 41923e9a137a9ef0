"""Waking fetchers that wait on other event loops (or threads).

The client side of an app publishes from its portal loop thread while the worker fetches
on its own loop, both against the same in-process broker state. A fetcher that found
nothing registers a :class:`Waiter` under the queues it watches; a publisher collects the
waiters of the queues it filled (under the broker's lock, so no wakeup can slip between
"found nothing" and "registered") and wakes them after releasing the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable

__all__ = ["Waiter", "WaiterRegistry"]


class Waiter:
    """One fetcher waiting on its own loop; :meth:`wake` may be called from any thread."""

    __slots__ = ("_event", "_loop", "_thread", "woken")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._thread = threading.get_ident()
        self.woken = False

    def wake(self) -> None:
        if self.woken:
            return
        self.woken = True
        if threading.get_ident() == self._thread:
            self._event.set()
            return
        # The waiting loop may already be closed (its owner shut down): nothing to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when woken, False on timeout."""
        if self.woken:
            return True
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._event.wait()
        except TimeoutError:
            return self.woken
        return True


class WaiterRegistry:
    """Waiters by queue name. Not locked itself: callers hold their broker's lock."""

    __slots__ = ("_by_queue",)

    def __init__(self) -> None:
        self._by_queue: dict[str, set[Waiter]] = {}

    def add(self, waiter: Waiter, queues: Iterable[str]) -> None:
        for name in queues:
            self._by_queue.setdefault(name, set()).add(waiter)

    def remove(self, waiter: Waiter, queues: Iterable[str]) -> None:
        for name in queues:
            waiters = self._by_queue.get(name)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_queue[name]

    def take(self, queues: Iterable[str]) -> list[Waiter]:
        """Remove and return the waiters of ``queues`` (wake them outside the lock)."""
        taken: list[Waiter] = []
        for name in queues:
            waiters = self._by_queue.pop(name, None)
            if waiters:
                taken.extend(waiters)
        return taken

    def take_all(self) -> list[Waiter]:
        taken = [w for waiters in self._by_queue.values() for w in waiters]
        self._by_queue.clear()
        return taken
