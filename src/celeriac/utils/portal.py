"""The sync face of the async core: where sync calls run their coroutines.

Client code is often synchronous (Django views, scripts). ``add.delay()`` and
``result.get()`` run a coroutine and block until it returns, in one of two places:

* On the **main thread** (scripts, gunicorn's sync workers, uWSGI), when no event loop
  runs there, on a loop of the main thread's own, run only for the length of the call.
  Handing the call to another thread costs two thread switches and a self-pipe wake-up
  each way, more than the broker round trip itself, so the busiest caller skips them.
  The main thread lives as long as the process, so its loop and connections never leak.
* Everywhere else (request threads that come and go, code already inside a running
  loop), on this process's *portal* loop, one background thread shared by all callers.

Both loops are created on first use and re-created in a child after ``fork`` (a forked
child inherits the memory of the parent's loops but not the portal's thread). Calling
:func:`run` from inside the portal loop itself would deadlock, so it raises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = [
    "run", "run_on_portal", "get_loop", "caller_loop", "in_portal_thread", "portal_started"
]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
#: The main thread's own loop; only the main thread touches it.
_main_loop: asyncio.AbstractEventLoop | None = None


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


def portal_started() -> bool:
    return _loop is not None and _thread is not None and _thread.is_alive()


def in_portal_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def caller_loop() -> asyncio.AbstractEventLoop:
    """The loop :func:`run` uses for calls from this thread (made on first use)."""
    if _runs_on_main_loop():
        return _get_main_loop()
    return get_loop()


def _runs_on_main_loop() -> bool:
    return threading.current_thread() is threading.main_thread() and (
        asyncio._get_running_loop() is None
    )


def _get_main_loop() -> asyncio.AbstractEventLoop:
    global _main_loop
    loop = _main_loop
    if loop is None or loop.is_closed():
        # not set as the thread's current loop: the user's get_event_loop() is untouched
        loop = _main_loop = asyncio.new_event_loop()
    return loop


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` where this thread's sync calls run, and return its result."""
    if in_portal_thread():
        coro.close()
        raise RuntimeError(
            "celeriac's sync API was called on its own portal loop; use the async API"
        )
    if not _runs_on_main_loop():
        return run_on_portal(coro, timeout)
    loop = _get_main_loop()
    task = loop.create_task(coro if timeout is None else asyncio.wait_for(coro, timeout))
    try:
        return loop.run_until_complete(task)
    except BaseException:
        # Ctrl-C while the loop waited: finish the call by cancelling it, so no
        # half-sent command stays on a connection the next call reuses.
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        raise


def run_on_portal(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the portal loop, whichever thread calls."""
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise


def _reset_after_fork() -> None:
    global _loop, _thread, _lock, _main_loop
    _loop = None
    _thread = None
    _lock = threading.Lock()
    _main_loop = None  # its selector is shared with the parent: never run it here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
