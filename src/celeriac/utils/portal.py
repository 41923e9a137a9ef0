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
import selectors
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
_portal_pid = 0
#: The main thread's own loop and the process that made it; only the main thread
#: touches them.
_main_loop: asyncio.AbstractEventLoop | None = None
_main_pid = 0
#: Loops left behind (inherited through fork, or interrupted mid-call): never run,
#: never collected, so their close() cannot touch what they shared.
_abandoned: list[asyncio.AbstractEventLoop] = []


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def get_loop() -> asyncio.AbstractEventLoop:
    """The portal loop, started on first use."""
    global _loop, _thread, _portal_pid
    loop = _loop
    alive = loop is not None and _thread is not None and _thread.is_alive()
    if alive and _portal_pid == os.getpid():
        return loop  # type: ignore[return-value]
    with _lock:
        if _loop is not None and _portal_pid != os.getpid():
            _disown(_loop)  # forked without Python's fork hooks: its thread is not here
            _loop = None
        if _loop is None or _thread is None or not _thread.is_alive():
            _portal_pid = os.getpid()
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
    global _main_loop, _main_pid
    loop = _main_loop
    if loop is None or loop.is_closed() or _main_pid != os.getpid():
        if loop is not None and _main_pid != os.getpid():
            # forked without Python's fork hooks (uWSGI does so by default)
            _disown(loop)
        # not set as the thread's current loop: the user's get_event_loop() is untouched
        loop = _main_loop = asyncio.new_event_loop()
        _main_pid = os.getpid()
    return loop


def _disown(loop: asyncio.AbstractEventLoop) -> None:
    """Make a loop inherited through fork harmless to the parent, whose epoll instance its
    selector shares: closing it (on collection, say) would unregister the parent's
    self-pipe, and the parent's loop would no longer wake for other threads' work."""
    if getattr(loop, "_selector", None) is not None:
        loop._selector = selectors.DefaultSelector()  # type: ignore[attr-defined]
    _abandoned.append(loop)


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
    except BaseException as exc:
        if isinstance(exc, Exception):
            raise
        # Ctrl-C (or SystemExit) while the loop ran: cancel the call, and leave this loop
        # behind, since the interrupt may have landed in another of its tasks (a result
        # subscriber, a half-read reply); the next call starts on a fresh loop with fresh
        # connections.
        global _main_loop
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        _main_loop = None
        _abandoned.append(loop)
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
    for loop in (_loop, _main_loop):
        if loop is not None:
            _disown(loop)
    _loop = None
    _thread = None
    _lock = threading.Lock()
    _main_loop = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
