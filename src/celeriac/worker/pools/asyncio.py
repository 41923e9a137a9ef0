"""The asyncio pool: ``async def`` tasks as asyncio tasks on the worker's own loop.

Up to ``limit`` executions at once. An ``async def`` task runs as an :class:`asyncio.Task`
on the worker loop (its request context is per asyncio task, so many can run at once);
``on_start`` is called just before that task is created. A sync task would block the loop,
so it goes to threads with the threads pool's semantics (see
:mod:`celeriac.worker.pools.threads`); sync and async executions share the ``limit``.

Time limits for ``async def`` tasks:

- soft: :class:`~celeriac.worker.tracer.AsyncSoftTimeLimitExceeded` (a
  SoftTimeLimitExceeded that is also a CancelledError) is raised at the ``await`` the task
  is suspended on: ``except SoftTimeLimitExceeded`` catches it, and asyncio helpers clean
  up as on cancellation.
- hard: the asyncio task is cancelled and the job reported as FAILURE TimeLimitExceeded at
  the deadline. A task that swallows the cancellation keeps running, but its late result
  is ignored and its slot is given to the next job.
- A task that blocks the loop (sync code inside ``async def``) cannot be interrupted
  until it yields; nothing on this loop can.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections import deque
from typing import Any

from .. import tracer as _tracer
from ._common import (
    DONE,
    PENDING,
    RUNNING,
    Entry,
    call_on_done,
    call_on_start,
    lost_outcome,
    revoked_outcome,
    time_limit_outcome,
)
from .base import Job, OnDone, OnStart, Outcome, Pool
from .threads import ThreadsPool

__all__ = ["AsyncioPool"]


class AsyncioPool(Pool):
    """``async def`` tasks on the worker loop; sync tasks on threads."""

    name = "asyncio"
    kills_on_time_limit = False

    def __init__(self, app: Any, limit: int, **kwargs: Any) -> None:
        super().__init__(app, limit, **kwargs)
        self._pending: deque[Entry] = deque()
        self._running: set[Entry] = set()
        self._closing = False
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._threads: ThreadsPool | None = None
        self._pid = os.getpid()

    async def start(self) -> None:
        await super().start()
        self._pid = os.getpid()

    # --- Pool API ----------------------------------------------------------------------

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
        while self._running:
            assert self.loop is not None
            waiter = self.loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter
        if self._threads is not None:
            await self._threads.stop()

    async def terminate(self) -> None:
        """Cancel running ``async def`` executions and report them lost; see threads for sync."""
        self._closing = True
        cancelled = []
        for entry in list(self._running):
            if entry.state != RUNNING:
                continue
            if entry.pid == 0:  # scheduled but not started: it is pending again
                entry.state = PENDING
                self._running.discard(entry)
                entry.cancel_timers()
                self._pending.appendleft(entry)
                continue
            if entry.atask is None:  # a sync task on a thread: the threads pool reports it
                continue
            entry.state = DONE
            entry.atask.cancel()
            cancelled.append(entry.atask)
            self._running.discard(entry)
            call_on_done(
                entry,
                lost_outcome(
                    f"Worker terminated while the task was running. Job: {entry.job.id}", self._pid
                ),
            )
        if self._threads is not None:
            await self._threads.terminate()
        if cancelled:
            await asyncio.wait(cancelled, timeout=1.0)
        self._notify_idle()

    # --- remote control (control commands and the autoscaler; not per job) ---------------

    def grow(self, n: int = 1) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        self.limit += n
        if self._threads is not None:
            self._threads.grow(n)
        self._dispatch()

    def shrink(self, n: int = 1) -> None:
        self._check_shrink(n)
        self.limit -= n
        if self._threads is not None:
            self._threads.shrink(n)

    def terminate_job(self, job_id: str, signum: int | None = None) -> bool:
        """Cancel the ``async def`` execution of ``job_id`` (a sync one goes to the
        threads pool's :meth:`~ThreadsPool.terminate_job`); reported REVOKED at once."""
        entry = next((e for e in self._running if e.job.id == job_id), None)
        if entry is None or entry.state != RUNNING:
            return False
        if entry.atask is None:  # a sync task on a thread (or not started yet)
            threads = self._threads
            return threads is not None and threads.terminate_job(job_id, signum)
        entry.state = DONE
        entry.atask.cancel()
        assert self.loop is not None
        self._complete(entry, revoked_outcome(self._pid))
        return True

    # --- dispatching ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        pending, running, limit, tasks = self._pending, self._running, self.limit, self.app.tasks
        while pending and len(running) < limit and not self._closing:
            entry = pending.popleft()
            entry.state = RUNNING
            running.add(entry)
            task = tasks.get(entry.job.name)
            if task is None or task.is_coroutine:
                self._start_async(entry)
            else:
                self._start_sync(entry)

    def _start_async(self, entry: Entry) -> None:
        loop = self.loop
        assert loop is not None, f"{type(self).__name__}.start() was not awaited"
        job = entry.job
        if job.time_limit or job.soft_time_limit:
            self._arm(entry, loop)
        call_on_start(entry, self._pid)
        entry.atask = loop.create_task(self._run_async(entry))

    def _start_sync(self, entry: Entry) -> None:
        threads = self._threads
        if threads is None:
            threads = self._threads = ThreadsPool(self.app, self.limit, hostname=self.hostname)
            threads.loop, threads._pid = self.loop, self._pid
        entry.pid = self._pid
        threads.submit(entry.job, entry.on_start, functools.partial(self._sync_done, entry))

    def _sync_done(self, entry: Entry, job: Job, outcome: Outcome) -> None:
        if entry.state == RUNNING:
            self._complete(entry, outcome)

    def _arm(self, entry: Entry, loop: asyncio.AbstractEventLoop) -> None:
        job = entry.job
        ex = entry.ex = _tracer.Execution()
        now = loop.time()
        timers = []
        soft, hard = job.soft_time_limit, job.time_limit
        if soft and (not hard or soft < hard):
            timers.append(
                loop.call_at(now + soft, ex.soft_async, f"soft time limit ({soft}s) exceeded")
            )
        if hard:
            timers.append(loop.call_at(now + hard, self._hard_limit, entry, now))
        entry.timers = timers

    def _hard_limit(self, entry: Entry, started: float) -> None:
        if entry.state != RUNNING:
            return
        entry.ex.hard_fired = True
        if entry.atask is not None:
            entry.atask.cancel()
        assert self.loop is not None
        self._complete(entry, time_limit_outcome(entry.job, self._pid, self.loop.time() - started))

    async def _run_async(self, entry: Entry) -> None:
        try:
            outcome = await _tracer.trace_async(self.app, entry.job, entry.ex)
        except asyncio.CancelledError:
            if entry.state == RUNNING:  # cancelled from outside the pool
                self._complete(
                    entry,
                    lost_outcome(
                        f"The task's asyncio task was cancelled. Job: {entry.job.id}", self._pid
                    ),
                )
            return
        except (KeyboardInterrupt, SystemExit) as exc:
            if entry.state == RUNNING:
                self._complete(entry, lost_outcome(f"interrupted by {exc!r}", self._pid))
            raise
        except BaseException as exc:
            outcome = _tracer.failure(exc)
        if entry.state == RUNNING:
            self._complete(entry, outcome)

    def _complete(self, entry: Entry, outcome: Outcome) -> None:
        entry.state = DONE
        self._running.discard(entry)
        call_on_done(entry, outcome)
        if self._pending:
            self._dispatch()
        if not self._running:
            self._notify_idle()

    def _notify_idle(self) -> None:
        if self._running:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
