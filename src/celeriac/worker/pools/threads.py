"""The threads pool: ``limit`` worker threads in the worker process.

For I/O-bound sync code. Threads are started as jobs need them, up to ``limit``. Jobs are
handed to a thread only when a slot is free, so jobs not yet started stay in the pool's
own queue and :meth:`ThreadsPool.take_pending` can give them back. ``on_start`` is called
on the loop when the job is handed to an idle thread (it starts at once).

Results come back to the loop in bursts: a thread appends its outcome to a shared list and
wakes the loop (``call_soon_threadsafe``) only when the list was empty, so a burst of
completions costs one wakeup.

Time limits, with the limits of threads:

- soft: :class:`~celeriac.exceptions.SoftTimeLimitExceeded` is raised inside the thread
  with ``PyThreadState_SetAsyncExc``; it lands at the next Python bytecode, so a thread
  blocked in one long C call (``time.sleep(60)``, a socket read without timeout) sees it
  only when that call returns. ``async def`` tasks get it at their current ``await``.
- hard: a thread cannot be killed. At the deadline the job is reported as FAILURE
  :class:`~celeriac.exceptions.TimeLimitExceeded`, the thread is abandoned (its late result
  is ignored, it exits when the function finally returns) and a replacement thread keeps
  the concurrency. An ``async def`` task is also cancelled.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import sys
import threading
from collections import deque
from typing import Any

from ...exceptions import SoftTimeLimitExceeded, Terminated
from .. import tracer as _tracer
from ._common import (
    DONE,
    RUNNING,
    Entry,
    call_on_done,
    call_on_start,
    lost_outcome,
    revoked_outcome,
    time_limit_outcome,
)
from .base import Job, OnDone, OnStart, Outcome, Pool

__all__ = ["ThreadsPool"]


class ThreadsPool(Pool):
    """``limit`` threads running sync tasks (``async def`` tasks on a loop per thread)."""

    name = "threads"
    kills_on_time_limit = False

    def __init__(self, app: Any, limit: int, **kwargs: Any) -> None:
        super().__init__(app, limit, **kwargs)
        self._pending: deque[Entry] = deque()
        self._running: set[Entry] = set()
        self._queue: queue.SimpleQueue[Entry | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: list[tuple[Entry, Outcome]] = []
        self._wakeup_scheduled = False
        self._threads: list[threading.Thread] = []
        #: Threads that will take another job (abandoned ones are not counted).
        self._nthreads = 0
        self._closing = False
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._pid = os.getpid()

    # --- Pool API ----------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        self._pid = os.getpid()

    def submit(self, job: Job, on_start: OnStart, on_done: OnDone) -> None:
        if self._closing:
            raise RuntimeError(f"{self!r} is stopping: it accepts no new jobs")
        self._pending.append(Entry(job, on_start, on_done))
        if len(self._running) < self.limit:
            self._dispatch()

    def take_pending(self) -> list[Job]:
        jobs = [entry.job for entry in self._pending]
        self._pending.clear()
        return jobs

    @property
    def num_active(self) -> int:
        return len(self._running)

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    async def stop(self) -> None:
        self._closing = True
        await self._wait_idle()
        self._stop_threads()

    async def terminate(self) -> None:
        """Report every running job as lost (threads cannot be killed) and let go of them."""
        self._closing = True
        lost = []
        with self._lock:
            for entry in self._running:
                if entry.state == RUNNING:
                    entry.state = DONE
                    lost.append(entry)
        for entry in lost:
            self._running.discard(entry)
            call_on_done(
                entry,
                lost_outcome(
                    f"Worker terminated while the task was running (thread). Job: {entry.job.id}",
                    self._pid,
                ),
            )
        self._nthreads = 0
        self._stop_threads()
        self._notify_idle()

    # --- remote control (control commands and the autoscaler; not per job) ---------------

    def grow(self, n: int = 1) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        self.limit += n
        self._dispatch()

    def shrink(self, n: int = 1) -> None:
        """Lower the limit; threads over it exit after their current job."""
        self._check_shrink(n)
        self.limit -= n
        for _ in range(min(n, max(self._nthreads - self.limit, 0))):
            self._nthreads -= 1
            self._queue.put(None)

    def terminate_job(self, job_id: str, signum: int | None = None) -> bool:
        """Raise :class:`~celeriac.exceptions.Terminated` in the thread running ``job_id``
        and let go of that thread, as at a hard time limit.

        A thread cannot be killed: the exception lands at the next Python bytecode, so a
        thread blocked in one long C call stops only when that call returns. The job is
        reported REVOKED at once and a replacement thread keeps the concurrency.
        """
        entry = next((e for e in self._running if e.job.id == job_id), None)
        if entry is None:
            return False
        with self._lock:
            if entry.state != RUNNING:
                return False
            entry.state = DONE
        ex = entry.ex
        if ex is not None and ex.running_sync:
            ex.inject(Terminated)
        elif ex is not None and ex.cancel_hard():
            pass
        else:
            _interrupt_thread_running(entry.job)
        self._nthreads -= 1
        self._running.discard(entry)
        call_on_done(entry, revoked_outcome(self._pid))
        self._dispatch()
        self._notify_idle()
        return True

    # --- dispatching ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        pending, running, limit = self._pending, self._running, self.limit
        while pending and len(running) < limit and not self._closing:
            entry = pending.popleft()
            entry.state = RUNNING
            running.add(entry)
            if self._nthreads < len(running):
                self._spawn()
            job = entry.job
            if job.time_limit or job.soft_time_limit:
                self._arm(entry)
            call_on_start(entry, self._pid)
            self._queue.put(entry)

    def _spawn(self) -> None:
        self._nthreads += 1
        thread = threading.Thread(
            target=self._work, name=f"celeriac-thread-{len(self._threads)}", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _arm(self, entry: Entry) -> None:
        loop = self.loop
        assert loop is not None, "ThreadsPool.start() was not awaited"
        job = entry.job
        entry.ex = _tracer.Execution()
        now = loop.time()
        timers = []
        if job.soft_time_limit and (not job.time_limit or job.soft_time_limit < job.time_limit):
            timers.append(loop.call_at(now + job.soft_time_limit, self._soft_limit, entry))
        if job.time_limit:
            timers.append(loop.call_at(now + job.time_limit, self._hard_limit, entry, now))
        entry.timers = timers

    def _soft_limit(self, entry: Entry) -> None:
        ex = entry.ex
        message = f"soft time limit ({entry.job.soft_time_limit}s) exceeded"
        if not ex.soft_async(message):
            ex.inject(SoftTimeLimitExceeded)

    def _hard_limit(self, entry: Entry, started: float) -> None:
        with self._lock:
            if entry.state != RUNNING:
                return
            entry.state = DONE
        entry.ex.cancel_hard()
        # The thread running it is abandoned: start another so concurrency stays.
        self._nthreads -= 1
        self._running.discard(entry)
        assert self.loop is not None
        call_on_done(entry, time_limit_outcome(entry.job, self._pid, self.loop.time() - started))
        self._dispatch()
        self._notify_idle()

    # --- in the worker threads -------------------------------------------------------------

    def _work(self) -> None:
        get, app, trace = self._queue.get, self.app, _tracer.trace
        try:
            while True:
                entry = get()
                if entry is None:
                    return
                try:
                    outcome = trace(app, entry.job, entry.ex)
                except BaseException as exc:  # SystemExit, KeyboardInterrupt in a thread
                    outcome = _tracer.failure(exc)
                if self._finished(entry, outcome):
                    return  # abandoned at its hard limit: a replacement took this slot
        finally:
            _tracer.close_thread_loop()

    def _finished(self, entry: Entry, outcome: Outcome) -> bool:
        with self._lock:
            if entry.state != RUNNING:
                return True
            entry.state = DONE
            self._done.append((entry, outcome))
            if self._wakeup_scheduled:
                return False
            self._wakeup_scheduled = True
        loop = self.loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the worker is gone
            pass
        return False

    # --- back on the loop ----------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._wakeup_scheduled = False
        running = self._running
        for entry, outcome in done:
            running.discard(entry)
            call_on_done(entry, outcome)
        self._dispatch()
        if not running:
            self._notify_idle()

    async def _wait_idle(self) -> None:
        while self._running:
            assert self.loop is not None
            waiter = self.loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _notify_idle(self) -> None:
        if self._running:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _stop_threads(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []
        self._nthreads = 0

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["threads"] = sum(1 for t in self._threads if t.is_alive())
        return info


def _interrupt_thread_running(job: Job) -> bool:
    """Raise :class:`Terminated` in the thread whose tracer runs ``job`` (found by its
    stack: jobs without a time limit carry no interrupt handle)."""
    code = _tracer.trace.__code__
    for ident, frame in sys._current_frames().items():
        current = frame
        while current is not None:
            if current.f_code is code and current.f_locals.get("job") is job:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(ident), ctypes.py_object(Terminated)
                )
                return True
            current = current.f_back
    return False
