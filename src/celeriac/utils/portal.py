"""The sync face of the async core: one background event-loop thread per process.

Client code is often synchronous (Django views, scripts). ``add.delay()`` and
``result.get()`` submit a coroutine to this process's *portal* loop and block until it
returns. The loop and its thread are created on first use and re-created in a child after
``fork`` (a forked child inherits the memory of the parent's loop but not its thread).

Calling :func:`run` from inside the portal loop itself would deadlock, so it raises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "get_loop", "in_portal_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def get_loop() -> asyncio.AbstractEventLoop:
    """The portal loop, started on first use."""
    global _loop, _thread
    loop = _loop
    if loop is not None and _thread is not None and _thread.is_alive():
        return loop
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(
                target=_serve, args=(loop, ready), name="celeriac-portal", daemon=True
            )
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def in_portal_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the portal loop and return its result (or raise its exception)."""
    if in_portal_thread():
        coro.close()
        raise RuntimeError(
            "celeriac's sync API was called on its own portal loop; use the async API"
        )
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise


def _reset_after_fork() -> None:
    global _loop, _thread, _lock
    _loop = None
    _thread = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
