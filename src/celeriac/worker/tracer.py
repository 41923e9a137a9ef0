"""Run one task execution and say what it came to.

Every pool (and eager ``apply``) calls :func:`trace` or :func:`trace_async`: they set the
task's request context, call the user's function, and turn the result or the exception
into an :class:`~celeriac.worker.pools.base.Outcome`. Nothing else happens here: result
storage, retry publishing, acks and events are the main loop's business, batched.

This is the hot path of the worker, so a successful call builds exactly two objects (the
request :class:`~celeriac.task.Context` and the Outcome) and formats nothing.

Time limits are enforced by the pools, which each have their own way to interrupt a
running task (a signal, an exception injected into a thread, cancelling an asyncio task).
They share one handle, :class:`Execution`, that the tracer fills in while the function
runs, so that an interrupt can only land while the user's code is running and never in
the pool's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import traceback as _traceback
from collections.abc import Coroutine, Generator
from time import perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .. import states
from ..exceptions import (
    Ignore,
    NotRegistered,
    Reject,
    RemoteTaskError,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)
from ..task import Context
from .pools.base import Job, Outcome

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = [
    "trace",
    "trace_async",
    "Execution",
    "AsyncSoftTimeLimitExceeded",
    "ExceptionStandIn",
    "failure",
    "format_exception",
    "close_thread_loop",
]

_SUCCESS = states.SUCCESS
_FAILURE = states.FAILURE
_RETRY = states.RETRY
_REJECTED = states.REJECTED
_IGNORED = states.IGNORED

#: Request fields every traced execution starts from; ``job.context`` may override them
#: (eager execution sets ``is_eager``), ``id``/``name``/``args``/``kwargs`` come from the job.
_BASE_CONTEXT: dict[str, Any] = {"is_eager": False, "called_directly": False}

_pid = os.getpid()


class AsyncSoftTimeLimitExceeded(SoftTimeLimitExceeded, asyncio.CancelledError):
    """The soft time limit, as raised at an ``await`` inside an ``async def`` task.

    It is a :class:`~celeriac.exceptions.SoftTimeLimitExceeded`, so ``except
    SoftTimeLimitExceeded`` in the task catches it, and it is also an
    :class:`asyncio.CancelledError`, so asyncio's own helpers (``wait_for``, ``TaskGroup``,
    ``gather``, ``timeout``) clean up exactly as they do on cancellation instead of leaving
    their inner tasks running. The outcome reports the plain SoftTimeLimitExceeded.
    """


class ExceptionStandIn(RemoteTaskError):
    """Stands in for an exception that cannot cross a process boundary (pickle).

    Carries the original's type name, module and arguments (as text), like
    :class:`~celeriac.exceptions.RemoteTaskError`, and unlike it survives pickling.
    """

    @classmethod
    def from_exception(cls, exc: BaseException) -> ExceptionStandIn:
        if isinstance(exc, RemoteTaskError):  # already a stand-in for something: keep its names
            return cls(exc.exc_type, exc.exc_module, exc.exc_message)
        kind = type(exc)
        args = [
            a if isinstance(a, str | int | float | bool) or a is None else _safe_repr(a)
            for a in exc.args
        ]
        return cls(kind.__qualname__, kind.__module__, args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exc_type, self.exc_module, self.exc_message))


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<unrepresentable {type(value).__qualname__}: {type(exc).__name__}>"


# --- the interrupt handle shared by the tracer and the pools ---------------------------

IDLE, SYNC, ASYNC, DONE = 0, 1, 2, 3

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class Execution:
    """Where a running execution can be interrupted, for a pool's time-limit timers.

    The tracer marks the span in which the user's function runs (``state`` is SYNC or
    ASYNC only then); the pool's timers call :meth:`inject`, :meth:`soft_async` or
    :meth:`cancel_hard`, which do nothing outside that span. Built only for jobs that have
    a time limit, so jobs without one pay nothing.
    """

    __slots__ = ("_exc_set", "atask", "guard", "hard_fired", "lock", "loop", "state", "thread_id")

    def __init__(self) -> None:
        self.state = IDLE
        self.lock = threading.Lock()
        self.thread_id = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.atask: asyncio.Task[Any] | None = None
        self.guard: _SoftGuard | None = None
        #: Set when the hard limit cancelled the asyncio task: its CancelledError is a
        #: TimeLimitExceeded failure, not a cancellation from outside.
        self.hard_fired = False
        self._exc_set = False

    def __repr__(self) -> str:
        return f"<Execution state={('idle', 'sync', 'async', 'done')[self.state]}>"

    # called by the tracer -------------------------------------------------------------

    def _enter_sync(self) -> None:
        with self.lock:
            self.thread_id = threading.get_ident()
            self.state = SYNC

    def _enter_async(
        self, loop: asyncio.AbstractEventLoop, atask: asyncio.Task[Any] | None, guard: _SoftGuard
    ) -> None:
        with self.lock:
            self.loop, self.atask, self.guard = loop, atask, guard
            self.state = ASYNC

    def _exit(self) -> None:
        with self.lock:
            self.state = DONE
            if self._exc_set:
                # An injected exception not delivered yet must not surface in pool code.
                self._exc_set = False
                _set_async_exc(ctypes.c_ulong(self.thread_id), None)

    # called by the pools --------------------------------------------------------------

    @property
    def running_sync(self) -> bool:
        """True while a plain (not ``async def``) function is running."""
        return self.state == SYNC

    def inject(self, exc_type: type[BaseException]) -> bool:
        """Raise ``exc_type`` in the thread running a sync function, at its next bytecode.

        A thread blocked in a C call (``time.sleep``, a socket read) only sees it when the
        call returns. Returns whether the exception was sent.
        """
        with self.lock:
            if self.state != SYNC or self._exc_set:
                return False
            self._exc_set = True
            _set_async_exc(ctypes.c_ulong(self.thread_id), ctypes.py_object(exc_type))
            return True

    def soft_async(self, message: str = "soft time limit exceeded") -> bool:
        """Raise :class:`AsyncSoftTimeLimitExceeded` at the ``await`` the task waits on.

        Thread-safe: the interrupt is scheduled on the execution's own loop.
        """
        with self.lock:
            if self.state != ASYNC or self.loop is None:
                return False
            loop = self.loop
        try:
            loop.call_soon_threadsafe(self._soft_now, message)
        except RuntimeError:  # the loop is closed: the execution is over
            return False
        return True

    def _soft_now(self, message: str) -> None:
        atask, guard = self.atask, self.guard
        if self.state != ASYNC or atask is None or guard is None or atask.done():
            return
        guard.soft_message = message
        atask.cancel()

    def cancel_hard(self) -> bool:
        """Cancel an ``async def`` execution at its hard limit (thread-safe)."""
        with self.lock:
            if self.state != ASYNC or self.loop is None or self.atask is None:
                return False
            self.hard_fired = True
            loop, atask = self.loop, self.atask
        try:
            loop.call_soon_threadsafe(atask.cancel)
        except RuntimeError:
            return False
        return True


class _SoftGuard:
    """Drives the user's coroutine and turns a soft-limit cancellation into the soft error.

    The task is cancelled the ordinary way (its waiter future is cancelled, as every
    asyncio primitive expects); when that CancelledError reaches this wrapper it is
    replaced by :class:`AsyncSoftTimeLimitExceeded`, thrown into the user's coroutine at
    the same ``await``, and the task's cancel request is withdrawn (``uncancel``).
    """

    __slots__ = ("coro", "ex", "soft_message")

    def __init__(self, coro: Coroutine[Any, Any, Any], ex: Execution) -> None:
        self.coro = coro
        self.ex = ex
        self.soft_message: str | None = None

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    out = coro.send(value)
                else:
                    err, error = error, None
                    out = coro.throw(err)
            except StopIteration as stop:
                return stop.value
            value = None
            try:
                value = yield out
            except asyncio.CancelledError as cancelled:
                message = self.soft_message
                if message is not None and not self.ex.hard_fired:
                    self.soft_message = None
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
                    error = AsyncSoftTimeLimitExceeded(message)
                else:
                    error = cancelled
            except BaseException as exc:  # GeneratorExit and friends go to the coroutine
                error = exc


async def _await(awaitable: Any) -> Any:
    return await awaitable


# --- per-thread event loops for async tasks run from sync code --------------------------

_local = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def close_thread_loop() -> None:
    """Close this thread's loop for async tasks, if it has one (pool threads call it at exit)."""
    loop = getattr(_local, "loop", None)
    if loop is not None:
        _local.loop = None
        if not loop.is_closed():
            loop.close()


def _run_coroutine(coro: Coroutine[Any, Any, Any], job: Job, ex: Execution | None) -> Any:
    loop = _thread_loop()
    if ex is None:
        return loop.run_until_complete(coro)
    guard = _SoftGuard(coro, ex)
    atask = loop.create_task(_await(guard))
    ex._enter_async(loop, atask, guard)
    try:
        return loop.run_until_complete(atask)
    except asyncio.CancelledError:
        if ex.hard_fired:
            raise TimeLimitExceeded(_hard_message(job)) from None
        raise


def _after_fork() -> None:
    global _pid, _local
    _pid = os.getpid()
    # A loop inherited from the parent shares its epoll and self-pipe: never use it.
    _local = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# --- outcomes ----------------------------------------------------------------------------


def format_exception(exc: BaseException) -> str:
    """The traceback text stored with a failure, without the tracer's own frame."""
    tb = first = exc.__traceback__
    while tb is not None and _is_machinery(tb.tb_frame.f_globals):
        tb = tb.tb_next
    if tb is None:
        tb = first
    return "".join(_traceback.format_exception(type(exc), exc, tb))


def _is_machinery(module_globals: dict[str, Any]) -> bool:
    """Frames of the tracer and of asyncio's loop, which say nothing about the task."""
    if module_globals is _GLOBALS:
        return True
    name: str = module_globals.get("__name__", "")
    return name == "asyncio" or name.startswith("asyncio.")


_GLOBALS = globals()


def failure(
    exc: BaseException, runtime: float = 0.0, *, worker_lost: bool = False, pid: int | None = None
) -> Outcome:
    """A FAILURE outcome for ``exc`` with its formatted traceback."""
    return Outcome(
        _FAILURE,
        None,
        exc,
        format_exception(exc),
        runtime,
        _pid if pid is None else pid,
        False,
        worker_lost,
    )


def _hard_message(job: Job) -> str:
    return f"TimeLimitExceeded({job.time_limit})"


def _context(job: Job) -> Context:
    ctx = Context(_BASE_CONTEXT)
    d = ctx.__dict__
    d.update(job.context)
    d["id"] = job.id
    d["name"] = job.name
    d["args"] = job.args
    d["kwargs"] = job.kwargs
    return ctx


def _on_exception(task: Any, exc: Exception, start: float) -> Outcome:
    """FAILURE, or RETRY when the task's ``autoretry_for`` claims the exception."""
    if isinstance(exc, AsyncSoftTimeLimitExceeded):
        plain = SoftTimeLimitExceeded(*exc.args)
        plain.__traceback__ = exc.__traceback__
        exc = plain
    if task.autoretry_for and not isinstance(exc, TimeLimitExceeded):
        tb = exc.__traceback__
        try:
            task.autoretry(exc)
        except Retry as retry:
            return Outcome(_RETRY, None, retry, None, perf_counter() - start, _pid)
        except Exception as other:  # max retries passed: the original (or what retry raised)
            if other is exc:  # re-raised: keep the traceback of where it happened
                other.__traceback__ = tb
            exc = other
    return Outcome(_FAILURE, None, exc, format_exception(exc), perf_counter() - start, _pid)


def _not_registered(job: Job, start: float) -> Outcome:
    exc = NotRegistered(job.name)
    return Outcome(_FAILURE, None, exc, format_exception(exc), perf_counter() - start, _pid)


def trace(app: Celeriac, job: Job, ex: Execution | None = None) -> Outcome:
    """Run ``job`` in this thread and return its outcome.

    ``async def`` tasks run on an event loop kept per thread (created on first use, not
    one ``asyncio.run`` per task). Only exceptions that are not :class:`Exception`
    (``KeyboardInterrupt``, ``SystemExit``, worker interrupts) propagate; the pool
    decides what they mean.

    Args:
        app: the app whose registry names the task.
        job: what to run.
        ex: the interrupt handle, when the pool enforces a time limit on this job.
    """
    start = perf_counter()
    try:
        task = app.tasks[job.name]
    except KeyError:
        return _not_registered(job, start)
    token = task.push_request(_context(job))
    try:
        try:
            if ex is None or task.is_coroutine:  # creating a coroutine runs no user code
                retval = task(*job.args, **job.kwargs)
            else:
                ex._enter_sync()
                try:
                    retval = task(*job.args, **job.kwargs)
                finally:
                    ex._exit()
            if retval.__class__ is CoroutineType:
                retval = _run_coroutine(retval, job, ex)
        except Retry as retry:
            return Outcome(_RETRY, None, retry, None, perf_counter() - start, _pid)
        except Reject as reject:
            return Outcome(
                _REJECTED, None, reject, None, perf_counter() - start, _pid, bool(reject.requeue)
            )
        except Ignore as ignore:
            return Outcome(_IGNORED, None, ignore, None, perf_counter() - start, _pid)
        except Exception as exc:
            return _on_exception(task, exc, start)
        return Outcome(_SUCCESS, retval, None, None, perf_counter() - start, _pid)
    finally:
        if ex is not None and ex.state != DONE:
            ex._exit()
        task.pop_request(token)


async def trace_async(app: Celeriac, job: Job, ex: Execution | None = None) -> Outcome:
    """Run ``job`` on the running loop: ``async def`` tasks are awaited here.

    A sync task is called inline (blocking the loop, as the solo pool wants). When the
    hard limit cancelled the execution (``ex.cancel_hard``), the outcome is a
    TimeLimitExceeded failure; any other cancellation propagates.
    """
    start = perf_counter()
    try:
        task = app.tasks[job.name]
    except KeyError:
        return _not_registered(job, start)
    token = task.push_request(_context(job))
    try:
        try:
            retval = task(*job.args, **job.kwargs)
            if retval.__class__ is CoroutineType:
                if ex is None:
                    retval = await retval
                else:
                    guard = _SoftGuard(retval, ex)
                    ex._enter_async(asyncio.get_running_loop(), asyncio.current_task(), guard)
                    try:
                        retval = await guard
                    finally:
                        ex._exit()
        except Retry as retry:
            return Outcome(_RETRY, None, retry, None, perf_counter() - start, _pid)
        except Reject as reject:
            return Outcome(
                _REJECTED, None, reject, None, perf_counter() - start, _pid, bool(reject.requeue)
            )
        except Ignore as ignore:
            return Outcome(_IGNORED, None, ignore, None, perf_counter() - start, _pid)
        except Exception as exc:
            return _on_exception(task, exc, start)
        except asyncio.CancelledError:
            if ex is not None and ex.hard_fired:
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                limit = TimeLimitExceeded(_hard_message(job))
                return Outcome(
                    _FAILURE, None, limit, format_exception(limit), perf_counter() - start, _pid
                )
            raise
        return Outcome(_SUCCESS, retval, None, None, perf_counter() - start, _pid)
    finally:
        task.pop_request(token)
