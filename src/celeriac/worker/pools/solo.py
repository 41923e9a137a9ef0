"""The solo pool: one execution at a time, on the worker's own loop thread.

Like Celery's solo pool, a sync task runs inline and blocks the loop until it returns (no
heartbeats, no remote control meanwhile); an ``async def`` task is awaited on the loop, so
the worker stays responsive while it waits. ``limit`` is always 1. A sync task starts in
its own loop callback, so ``submit`` never runs user code and I/O gets a turn between jobs;
``on_start`` is called right before the function.

Time limits:

- sync tasks, when the loop runs in the main thread: the soft limit raises
  :class:`~celeriac.exceptions.SoftTimeLimitExceeded` inside the task from a ``SIGALRM``
  (``setitimer(ITIMER_REAL)``), which also interrupts ``time.sleep`` and other blocking
  calls; the hard limit, a second alarm, raises
  :class:`~celeriac.exceptions.TimeLimitExceeded` inside the task. Nothing can be killed
  here: a task that catches that exception keeps running. A SIGALRM handler and interval
  timer set by someone else are put aside for the job and restored (with the time that
  passed taken off) afterwards.
- sync tasks when the loop runs in another thread: signals only reach the main thread, so
  limits are not enforced (a warning is logged once).
- ``async def`` tasks: as in the asyncio pool (soft at the current ``await``, hard cancels).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from ...exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from .. import tracer as _tracer
from ._common import RUNNING, Entry, call_on_start, lost_outcome
from .asyncio import AsyncioPool
from .base import Outcome

__all__ = ["SoloPool"]

logger = logging.getLogger("celeriac.worker.pools")

#: Alarms arriving this much (s) before their deadline count as on time.
_SLACK = 0.002


class SoloPool(AsyncioPool):
    """Runs each task in the worker's event-loop thread, one at a time."""

    name = "solo"
    kills_on_time_limit = False

    def __init__(self, app: Any, limit: int = 1, **kwargs: Any) -> None:
        super().__init__(app, limit, **kwargs)
        self.limit = 1
        self._warned_no_signals = False

    def grow(self, n: int = 1) -> None:
        raise NotImplementedError("the solo pool runs one task at a time: it cannot grow")

    def shrink(self, n: int = 1) -> None:
        raise NotImplementedError("the solo pool runs one task at a time: it cannot shrink")

    def _start_sync(self, entry: Entry) -> None:
        assert self.loop is not None, "SoloPool.start() was not awaited"
        self.loop.call_soon(self._run_inline, entry)

    def _run_inline(self, entry: Entry) -> None:
        if entry.state != RUNNING:  # terminated before its turn
            return
        call_on_start(entry, self._pid)
        try:
            outcome = self._trace_sync(entry)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: the worker goes down
            self._complete(entry, lost_outcome(f"interrupted by {exc!r}", self._pid))
            raise
        self._complete(entry, outcome)

    def _trace_sync(self, entry: Entry) -> Outcome:
        job = entry.job
        if not (job.time_limit or job.soft_time_limit):
            return _tracer.trace(self.app, job)
        if threading.current_thread() is not threading.main_thread():
            if not self._warned_no_signals:
                self._warned_no_signals = True
                logger.warning(
                    "solo pool: time limits of sync tasks are not enforced because the worker "
                    "loop does not run in the main thread (signals only reach the main thread)"
                )
            return _tracer.trace(self.app, job)
        ex = _tracer.Execution()
        alarm = _Alarm(ex, job.soft_time_limit, job.time_limit)
        previous_handler = signal.signal(signal.SIGALRM, alarm.on_alarm)
        started = time.monotonic()
        previous_timer = signal.setitimer(signal.ITIMER_REAL, alarm.first_delay())
        try:
            return _tracer.trace(self.app, job, ex)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(
                signal.SIGALRM, previous_handler if previous_handler is not None else signal.SIG_DFL
            )
            if previous_timer[0] > 0:
                left = previous_timer[0] - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), previous_timer[1])


class _Alarm:
    """The SIGALRM handler for one sync job: soft first, then hard."""

    __slots__ = ("ex", "hard", "hard_at", "soft", "soft_at")

    def __init__(self, ex: _tracer.Execution, soft: float | None, hard: float | None) -> None:
        now = time.monotonic()
        self.ex = ex
        self.soft, self.hard = soft, hard
        self.soft_at = now + soft if soft and (not hard or soft < hard) else None
        self.hard_at = now + hard if hard else None

    def first_delay(self) -> float:
        deadline = self.soft_at if self.soft_at is not None else self.hard_at
        assert deadline is not None
        return max(deadline - time.monotonic(), 1e-6)

    def on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if not self.ex.running_sync:
            return  # the function already returned: a late alarm means nothing
        now = time.monotonic()
        if self.soft_at is not None:
            if now < self.soft_at - _SLACK:
                signal.setitimer(signal.ITIMER_REAL, self.soft_at - now)
                return
            self.soft_at = None
            if self.hard_at is not None:
                signal.setitimer(signal.ITIMER_REAL, max(self.hard_at - now, 1e-6))
            raise SoftTimeLimitExceeded(f"soft time limit ({self.soft}s) exceeded")
        if self.hard_at is not None:
            if now < self.hard_at - _SLACK:
                signal.setitimer(signal.ITIMER_REAL, self.hard_at - now)
                return
            self.hard_at = None
            raise TimeLimitExceeded(f"TimeLimitExceeded({self.hard})")
