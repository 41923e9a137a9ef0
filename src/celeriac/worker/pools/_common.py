"""Pieces every pool shares: the per-job entry, callback guards, lost-execution outcomes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ...exceptions import TimeLimitExceeded, WorkerLostError
from .base import Job, OnDone, OnStart, Outcome

__all__ = [
    "Entry",
    "PENDING",
    "RUNNING",
    "DONE",
    "call_on_start",
    "call_on_done",
    "lost_outcome",
    "time_limit_outcome",
    "revoked_outcome",
]

logger = logging.getLogger("celeriac.worker.pools")

PENDING, RUNNING, DONE = 0, 1, 2


class Entry:
    """One submitted job and its callbacks, as a pool tracks it.

    ``state`` moves PENDING -> RUNNING -> DONE exactly once; whoever moves it to DONE
    (the execution finishing, a hard time limit, a lost process, terminate) is the one
    that reports, so ``on_done`` is called exactly once per started job.
    """

    __slots__ = (
        "atask",
        "ex",
        "job",
        "number",
        "on_done",
        "on_start",
        "order",
        "pid",
        "state",
        "timers",
    )

    def __init__(self, job: Job, on_start: OnStart, on_done: OnDone) -> None:
        self.job = job
        self.on_start = on_start
        self.on_done = on_done
        self.state = PENDING
        self.ex: Any = None
        self.timers: list[asyncio.TimerHandle] | None = None
        self.pid = 0
        self.atask: asyncio.Task[Any] | None = None
        #: Submission order (pools that hand jobs out ahead of time keep it to give
        #: unstarted ones back in order).
        self.order = 0
        #: The job's number in the stream of jobs sent to one pool process.
        self.number = 0

    def __repr__(self) -> str:
        return f"<Entry {self.job.name}[{self.job.id}] state={self.state}>"

    def cancel_timers(self) -> None:
        timers = self.timers
        if timers is not None:
            self.timers = None
            for handle in timers:
                handle.cancel()


def call_on_start(entry: Entry, pid: int) -> None:
    """Call ``on_start``; a failing callback is logged, it must not wedge the pool."""
    entry.pid = pid
    try:
        entry.on_start(entry.job, pid)
    except Exception:
        logger.exception("pool: on_start callback failed for %s[%s]", entry.job.name, entry.job.id)


def call_on_done(entry: Entry, outcome: Outcome) -> None:
    """Call ``on_done`` (once: the caller has moved the entry to DONE)."""
    entry.cancel_timers()
    try:
        entry.on_done(entry.job, outcome)
    except Exception:
        logger.exception("pool: on_done callback failed for %s[%s]", entry.job.name, entry.job.id)


def lost_outcome(reason: str, pid: int, runtime: float = 0.0) -> Outcome:
    """FAILURE WorkerLostError, marked ``worker_lost`` so the request can requeue it."""
    exc = WorkerLostError(reason)
    return Outcome(
        "FAILURE",
        None,
        exc,
        f"celeriac.exceptions.WorkerLostError: {reason}\n",
        runtime,
        pid,
        False,
        True,
    )


def time_limit_outcome(job: Job, pid: int, runtime: float = 0.0) -> Outcome:
    """FAILURE TimeLimitExceeded for a hard limit the pool enforced from outside."""
    exc = TimeLimitExceeded(f"TimeLimitExceeded({job.time_limit})")
    text = f"celeriac.exceptions.TimeLimitExceeded: {exc}\n"
    return Outcome("FAILURE", None, exc, text, runtime, pid)


def revoked_outcome(pid: int, runtime: float = 0.0) -> Outcome:
    """REVOKED: the execution was stopped by ``revoke(terminate=True)``.

    The request only acks its message on this outcome; whoever terminated the job records
    the REVOKED state and sends ``task-revoked``.
    """
    return Outcome("REVOKED", None, None, None, runtime, pid)
