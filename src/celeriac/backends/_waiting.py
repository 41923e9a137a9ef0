"""Waiting for results: per-loop waiters, a process-wide wake-up hub, and the wait loop.

A backend object belongs to one event loop, but one process often has several loops
using the same store: the worker's loop writes results while the portal loop (sync
``result.get()``) waits for them. So every store keeps a :class:`Hub` per store
location; a backend with waiting callers registers its :class:`Waiting` there, and a
write wakes the waiters of every loop at once (``call_soon_threadsafe`` across threads).

Waking is only a hint to read again: the reader always re-reads the store, so a wake
that races with ``forget`` or expiry cannot hand out a stale meta.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable

from .. import states
from ..exceptions import ResultTimeoutError
from .base import Meta

__all__ = ["Waiting", "Hub", "hub_for", "wait_until_ready", "may_overwrite"]


def may_overwrite(old_status: str | None, new_status: str) -> bool:
    """The ready-state guard: may a write of ``new_status`` replace ``old_status``?

    Nothing replaces SUCCESS (Celery's dedup guard: the first success wins, so a
    redelivered duplicate cannot change a value a caller may already have read), and no
    non-ready state replaces a ready one (a late STARTED must not hide a result). A ready
    state may replace another non-SUCCESS ready state, so a redelivered task that succeeds
    after a FAILURE or REVOKED was recorded reports the truth.
    """
    if old_status is None:
        return True
    if old_status == states.SUCCESS:
        return False
    return not (old_status in states.READY_STATES and new_status not in states.READY_STATES)


class Waiting:
    """Futures of one backend (one event loop), by task id.

    Only the owning loop's thread touches the dict; other threads go through
    :meth:`wake_threadsafe`.
    """

    __slots__ = ("__weakref__", "_by_id", "_closed", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create on the thread that runs ``loop``."""
        self.loop = loop
        self.thread = threading.get_ident()
        self._by_id: dict[str, set[asyncio.Future[Meta | None]]] = {}
        self._closed: BaseException | None = None

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def ids(self) -> list[str]:
        return list(self._by_id)

    def add(self, task_id: str) -> asyncio.Future[Meta | None]:
        if self._closed is not None:
            raise self._closed
        fut: asyncio.Future[Meta | None] = self.loop.create_future()
        self._by_id.setdefault(task_id, set()).add(fut)
        return fut

    def discard(self, task_id: str, fut: asyncio.Future[Meta | None]) -> None:
        futs = self._by_id.get(task_id)
        if futs is not None:
            futs.discard(fut)
            if not futs:
                del self._by_id[task_id]

    def wake(self, task_ids: Iterable[str], metas: dict[str, Meta] | None = None) -> None:
        """Wake the waiters of ``task_ids`` (on the owning loop's thread)."""
        for task_id in task_ids:
            for fut in self._by_id.get(task_id, ()):
                if not fut.done():
                    fut.set_result(metas.get(task_id) if metas else None)

    def wake_threadsafe(self, task_ids: list[str]) -> None:
        with contextlib.suppress(RuntimeError):  # the owning loop is closed: nobody waits
            self.loop.call_soon_threadsafe(self.wake, task_ids)

    def close(self, error: BaseException) -> None:
        """Fail every current and future wait with ``error`` (the backend was closed)."""
        self._closed = error
        for futs in self._by_id.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(error)


class Hub:
    """The waiting backends of one store location in this process."""

    __slots__ = ("_lock", "_members")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: weakref.WeakSet[Waiting] = weakref.WeakSet()

    def join(self, waiting: Waiting) -> None:
        with self._lock:
            self._members.add(waiting)

    def leave(self, waiting: Waiting) -> None:
        with self._lock:
            self._members.discard(waiting)

    def notify(self, task_ids: list[str]) -> None:
        """Tell every waiting loop that these ids were written (call after commit)."""
        if not task_ids:
            return
        with self._lock:
            members = list(self._members)
        current = threading.get_ident()
        for waiting in members:
            if waiting.loop.is_closed():
                continue
            if waiting.thread == current:
                waiting.wake(task_ids)
            else:
                waiting.wake_threadsafe(task_ids)


_hubs_lock = threading.Lock()
_hubs: dict[str, Hub] = {}


def hub_for(key: str) -> Hub:
    """The process-wide hub of a store location (a memory namespace, a database path)."""
    with _hubs_lock:
        hub = _hubs.get(key)
        if hub is None:
            hub = _hubs[key] = Hub()
        return hub


def _reset_after_fork() -> None:
    # A forked child has none of the parent's loops, and a lock held by another parent
    # thread at fork time would never be released in the child.
    global _hubs_lock, _hubs
    _hubs_lock = threading.Lock()
    _hubs = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


async def wait_until_ready(
    task_id: str,
    timeout: float | None,
    waiting: Waiting,
    read: Callable[[str], Awaitable[Meta]],
    on_wait: Callable[[], None] | None = None,
) -> Meta:
    """Read ``task_id`` until its meta is ready; sleep on ``waiting`` in between.

    The waiter is registered *before* each read, so a write landing between the read
    and the sleep still wakes it.

    Args:
        task_id: The task to wait for.
        timeout: Seconds to wait in all (None: forever; 0: one read).
        waiting: The backend's waiters.
        read: Reads the current meta (expired counts as PENDING).
        on_wait: Called once a waiter is registered and the read found no ready state
            (a backend starts its cross-process poller there).

    Raises:
        ResultTimeoutError: Not ready within ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + max(timeout, 0.0)
    while True:
        fut = waiting.add(task_id)
        try:
            meta = await read(task_id)
            if meta.get("status") in states.READY_STATES:
                return meta
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise ResultTimeoutError(
                    f"task {task_id} was not ready within {timeout}s "
                    f"(last state {meta.get('status')}); it may still complete"
                )
            if on_wait is not None:
                on_wait()
            try:
                async with asyncio.timeout(remaining):
                    got = await fut
            except TimeoutError:
                continue  # one last read before giving up, then the deadline check raises
            if got is not None and got.get("status") in states.READY_STATES:
                return got
        finally:
            waiting.discard(task_id, fut)
