"""The prefork pool: ``limit`` child processes forked from the worker.

Children are forked in :meth:`PreforkPool.start` and replaced whenever one dies, is killed
at a hard time limit, or has run ``max_tasks_per_child`` jobs. Parent and child talk over a
pair of pipes with length-prefixed pickled lists (see
:mod:`celeriac.worker.pools._prefork_child`); the parent reads outcomes with
``loop.add_reader``, so no thread sits between a child and the loop.

Each child runs one job at a time, but holds a few more, so the next one is already there
when the current one ends (no child waits for a round trip through this loop; that wait,
not the pipes, bounded throughput). How many depends on how long jobs take: about
:data:`QUEUED_WORK` seconds of them, between :data:`PIPELINE_DEPTH` and
:data:`PIPELINE_DEPTH_MAX`, so short jobs travel several to a write and a wake-up while
long ones keep the pool fair. A job that turns out long does not hold the jobs queued
behind it: after :data:`STEAL_AFTER` seconds they are taken back (see below) and go to
the other children, and nothing queues behind it until it ends. The child reports the
start of each job, which makes two things exact: when a child dies, the job it was running
is known (FAILURE :class:`~celeriac.exceptions.WorkerLostError`, ``worker_lost=True``, so
``reject_on_worker_lost`` can requeue it) while the jobs queued behind it never started
and go to another child; and ``on_start`` is called when the job really starts. A job
with a time limit goes only to an idle child and nothing is queued behind it, so a limit
signal can only ever hit that job. Jobs leave in submission order, to the least busy
child.

Jobs handed to a child ahead of time can still be taken back (warm shutdown returns them
to the broker at once; a long job gives up those behind it): :meth:`take_pending` and the
steal recall them under a lock the child takes before starting each job, so a job is
either started or given back, never both.

Time limits: at the soft deadline the parent sends SIGUSR1 and the child raises
SoftTimeLimitExceeded inside the task (at the current ``await`` for ``async def`` tasks);
at the hard deadline the parent SIGKILLs the child, reports FAILURE TimeLimitExceeded and
forks a replacement.

Children are reaped through a pidfd per child on Linux (readable when the process exits);
elsewhere through end-of-file on the result pipe followed by ``waitpid`` polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from typing import Any

from ...exceptions import DecodeError, EncodeError
from .. import tracer as _tracer
from . import _prefork_child as _child
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

__all__ = ["PreforkPool"]

logger = logging.getLogger("celeriac.worker.pools")

#: Seconds a warm stop waits for idle children to exit before killing them.
EXIT_GRACE = 10.0
#: Seconds between ``waitpid`` polls where pidfds are not available.
REAP_POLL = 0.01
#: Children that may die before their first job, in a row, before replacing them slows down.
EARLY_DEATHS_ALLOWED = 3
#: Longest pause (s) before replacing a child when children keep dying at start.
RESPAWN_DELAY_MAX = 5.0
#: Bytes read from a result pipe per readable event.
READ_SIZE = 1 << 16
#: Jobs a child holds at once, at least and at most: the running one and those queued
#: behind it. The most is high enough that jobs of a few tens of microseconds still
#: travel many to a write (each write to an idle child wakes it, which is what a short
#: job costs most on a virtual machine); QUEUED_WORK keeps longer jobs to a few.
PIPELINE_DEPTH = 2
PIPELINE_DEPTH_MAX = 32
#: Seconds of work (by the recent average run time) a child is handed ahead.
QUEUED_WORK = 0.002
#: Weight of the latest job in the average run time.
RUNTIME_WEIGHT = 0.05
#: Seconds a job may run before the jobs queued behind it go to other children.
STEAL_AFTER = 0.05

_HEADER_SIZE = _child.HEADER.size
_unpack = _child.HEADER.unpack
_HAS_PIDFD = hasattr(os, "pidfd_open")
_CHILD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}
#: Signals children ignore (they belong to the worker): terminating a job with one of
#: them kills its child instead, which is what the same signal does to Celery's children.
_IGNORED_IN_CHILD = {signal.SIGINT, signal.SIGTERM}


class _Child:
    """The parent's view of one child process."""

    __slots__ = (
        "assigned",
        "buffer",
        "count",
        "entry",
        "exclusive",
        "exited",
        "handover",
        "job_fd",
        "kill_reason",
        "outbox",
        "pid",
        "pidfd",
        "queue",
        "result_fd",
        "retiring",
        "sent",
        "slow",
        "started",
    )

    def __init__(
        self, pid: int, job_fd: int, result_fd: int, pidfd: int | None, handover: Any
    ) -> None:
        self.pid = pid
        self.handover = handover
        self.job_fd: int | None = job_fd
        self.result_fd: int | None = result_fd
        self.pidfd = pidfd
        self.buffer = bytearray()
        #: Jobs sent and not finished, in order; the first is running once it started.
        self.queue: deque[Entry] = deque()
        #: The job running now (its start was reported), else None.
        self.entry: Entry | None = None
        #: True while it runs a job with a time limit (nothing may queue behind it).
        self.exclusive = False
        self.count = 0
        #: Jobs sent, ever (the child numbers them in this order).
        self.sent = 0
        #: Jobs sent and not taken back: what counts against ``max_tasks_per_child``.
        self.assigned = 0
        self.retiring = False
        self.kill_reason: str | None = None
        self.outbox: memoryview | None = None
        self.exited = False
        self.started = 0.0
        #: True while its job runs longer than STEAL_AFTER (nothing may queue behind it).
        self.slow = False

    def __repr__(self) -> str:
        job = self.entry.job.id if self.entry is not None else None
        return f"<child pid={self.pid} job={job} queued={len(self.queue)} done={self.count}>"


class PreforkPool(Pool):
    """``limit`` forked child processes, each running one job at a time."""

    name = "prefork"
    kills_on_time_limit = True

    def __init__(self, app: Any, limit: int, **kwargs: Any) -> None:
        super().__init__(app, limit, **kwargs)
        if self.max_tasks_per_child is not None and self.max_tasks_per_child < 1:
            raise ValueError(
                f"max_tasks_per_child must be at least 1, not {self.max_tasks_per_child}"
            )
        self._pending: deque[Entry] = deque()
        self._running: set[Entry] = set()
        self._children: dict[int, _Child] = {}
        #: Parent-side fds of every child: a new child closes them all.
        self._fds: set[int] = set()
        self._closing = False
        self._waiters: list[asyncio.Future[None]] = []
        self._early_deaths = 0
        self._dispatch_handle: asyncio.Handle | None = None
        self._submitted = 0
        #: Average job run time (s), and the jobs a child may hold because of it.
        self._runtime = QUEUED_WORK
        self._depth = PIPELINE_DEPTH
        self._steal_handle: asyncio.TimerHandle | None = None

    # --- Pool API ----------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        for _ in range(self.limit):
            self._spawn()
        if self._pending:
            self._dispatch()

    def submit(self, job: Job, on_start: OnStart, on_done: OnDone) -> None:
        if self._closing:
            raise RuntimeError(f"{self!r} is stopping: it accepts no new jobs")
        entry = Entry(job, on_start, on_done)
        self._submitted += 1
        entry.order = self._submitted
        self._pending.append(entry)
        # Dispatch once per loop iteration: the jobs of one fetched batch go to each
        # child in one write, not one write (and one child wake-up) per job.
        if self._dispatch_handle is None and self.loop is not None:
            self._dispatch_handle = self.loop.call_soon(self._dispatch_soon)

    def take_pending(self) -> list[Job]:
        """Every job not started: those waiting here and those handed to a child ahead of
        time, which the child will now never start (see :class:`_child.Handover`)."""
        taken = list(self._pending)
        self._pending.clear()
        for child in list(self._children.values()):
            if len(child.queue) > (child.entry is not None) and not child.exited:
                taken.extend(self._recall(child)[1])
        taken.sort(key=lambda e: e.order)
        self._notify()
        return [entry.job for entry in taken]

    def _recall(self, child: _Child) -> tuple[int | None, list[Entry]]:
        """Take back every job handed to ``child`` that it has not started.

        Returns the number of the last job it started (None if it died holding the
        handover lock: its exit reports its jobs) and the jobs taken back, in order.
        """
        started = child.handover.recall(child.sent, lambda: _alive(child))
        if started is None:
            return None, []
        keep: deque[Entry] = deque()
        taken: list[Entry] = []
        for entry in child.queue:
            if entry.number <= started:
                keep.append(entry)
            else:
                entry.state = PENDING
                self._running.discard(entry)
                taken.append(entry)
        child.queue = keep
        child.assigned -= len(taken)
        child.exclusive = any(_limited(e) for e in keep)
        most = self.max_tasks_per_child
        if most and not keep and child.assigned >= most and not self._closing:
            self._retire(child)
            self._spawn()
        return started, taken

    @property
    def num_active(self) -> int:
        return sum(1 for c in self._children.values() if c.entry is not None)

    @property
    def num_pending(self) -> int:
        ahead = sum(len(c.queue) - (c.entry is not None) for c in self._children.values())
        return len(self._pending) + ahead

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children.values() if not c.retiring and not c.exited]

    async def stop(self) -> None:
        """Wait for running jobs, then ask every child to exit (SIGKILL after a grace period)."""
        self._closing = True
        await self._wait_for(lambda: not self._running)
        for child in list(self._children.values()):
            self._retire(child)
        try:
            await asyncio.wait_for(self._wait_for(lambda: not self._children), EXIT_GRACE)
        except TimeoutError:
            logger.warning("prefork: children did not exit in %ss; killing them", EXIT_GRACE)
            await self.terminate()

    async def terminate(self) -> None:
        """SIGKILL every child; running jobs are reported lost (WorkerLostError)."""
        self._closing = True
        for child in list(self._children.values()):
            if child.kill_reason is None:
                child.kill_reason = "terminated"
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(self._wait_for(lambda: not self._children), 5.0)
        except TimeoutError:  # a reaper missed its event: reap by hand
            for child in list(self._children.values()):
                self._reap(child, block=True)

    # --- remote control (control commands and the autoscaler; not per job) ---------------

    def grow(self, n: int = 1) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        self.limit += n
        if self.loop is None or self._closing:
            return
        for _ in range(n):
            self._spawn()
        if self._pending:
            self._dispatch()

    def shrink(self, n: int = 1) -> None:
        """Retire ``n`` children, the least busy first; each exits once its jobs are done."""
        self._check_shrink(n)
        self.limit -= n
        live = [c for c in self._children.values() if not c.retiring and not c.exited]
        live.sort(key=lambda c: len(c.queue))
        for child in live[:n]:
            self._retire(child)

    def restart(self) -> None:
        """Fork ``limit`` fresh children; the old ones exit once their jobs are done."""
        if self.loop is None or self._closing:
            return
        old = [c for c in self._children.values() if not c.retiring and not c.exited]
        for child in old:
            self._retire(child)
        for _ in range(self.limit):
            self._spawn()
        if self._pending:
            self._dispatch()

    def terminate_job(self, job_id: str, signum: int | None = None) -> bool:
        """Signal the child running ``job_id`` (SIGKILL for the signals children ignore,
        and when the default SIGTERM is asked for); the job is reported REVOKED at once."""
        for child in self._children.values():
            entry = child.entry
            if entry is not None and entry.job.id == job_id and not child.exited:
                break
        else:
            return False
        if entry.state != RUNNING:
            return False
        # The child may already have finished this job and started the next one (its
        # records not read yet): stop it starting anything more, and signal only if the
        # job it runs is still this one. Jobs behind it go to another child.
        started, behind = self._recall(child)
        for waiting in reversed(behind):
            self._pending.appendleft(waiting)
        if started is None or started > entry.number:
            if self._pending:
                self._dispatch()
            return False
        sig = signal.SIGKILL if signum is None or signum in _IGNORED_IN_CHILD else signum
        entry.state = DONE
        self._running.discard(entry)
        if sig == signal.SIGKILL:
            child.kill_reason = "revoked"
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)
        assert self.loop is not None
        call_on_done(entry, revoked_outcome(child.pid, self.loop.time() - child.started))
        self._notify()
        return True

    # --- children ------------------------------------------------------------------------

    def _spawn(self) -> _Child:
        loop = self.loop
        assert loop is not None, "PreforkPool.start() was not awaited"
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        parent_pid = os.getpid()
        close_in_child = [*self._fds, job_w, result_r]
        handover = _child.Handover()
        # Signals meant for the child wait until it has set its own handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_SIGNALS)
        pid = -1
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which always os._exit()s
                _child.child_main(
                    self.app, job_r, result_w, close_in_child, parent_pid, handover, mask
                )
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(job_r)
        os.close(result_w)
        os.set_blocking(job_w, False)
        os.set_blocking(result_r, False)
        pidfd = None
        if _HAS_PIDFD:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        child = _Child(pid, job_w, result_r, pidfd, handover)
        self._children[pid] = child
        self._fds.update((job_w, result_r))
        loop.add_reader(result_r, self._on_readable, child)
        if pidfd is not None:
            self._fds.add(pidfd)
            loop.add_reader(pidfd, self._on_exit, child)
        return child

    def _retire(self, child: _Child) -> None:
        """Ask a child to exit when it is idle: end-of-file on its job pipe."""
        child.retiring = True
        self._close_job_fd(child)

    def _close_job_fd(self, child: _Child) -> None:
        fd = child.job_fd
        if fd is not None:
            child.job_fd = None
            child.outbox = None
            assert self.loop is not None
            self.loop.remove_writer(fd)
            self._fds.discard(fd)
            os.close(fd)

    # --- sending jobs --------------------------------------------------------------------

    def _pick(self, exclusive: bool) -> _Child | None:
        """The least busy child that may take one more job, or None."""
        best: _Child | None = None
        limit = 1 if exclusive else self._depth
        most = self.max_tasks_per_child
        for child in self._children.values():
            held = len(child.queue)
            if (
                held >= limit
                or child.exclusive
                or child.slow
                or child.retiring
                or child.exited
                or child.job_fd is None
                or (most is not None and child.assigned >= most)
            ):
                continue
            if best is None or held < len(best.queue):
                best = child
                if held == 0:
                    break
        return best

    def _dispatch_soon(self) -> None:
        self._dispatch_handle = None
        self._dispatch()

    def _dispatch(self) -> None:
        pending = self._pending
        frames: dict[_Child, list[bytes]] = {}
        while pending and not self._closing:
            job = pending[0].job
            exclusive = bool(job.time_limit or job.soft_time_limit)
            child = self._pick(exclusive)
            if child is None:
                break
            entry = pending.popleft()
            try:
                frame = _child.encode_frame([_child.job_record(job)])
            except Exception as err:
                entry.state = DONE
                bad = EncodeError(
                    f"job {job.name}[{job.id}] cannot be sent to a pool process: {err}"
                )
                call_on_done(entry, _tracer.failure(bad))
                continue
            entry.state = RUNNING
            entry.pid = child.pid
            self._running.add(entry)
            child.queue.append(entry)
            child.sent += 1
            child.assigned += 1
            entry.number = child.sent
            child.exclusive = exclusive
            frames.setdefault(child, []).append(frame)
        for child, parts in frames.items():
            self._send(child, parts[0] if len(parts) == 1 else b"".join(parts))
            if len(child.queue) > 1 and self._steal_handle is None and self.loop is not None:
                self._steal_handle = self.loop.call_later(STEAL_AFTER / 2, self._steal)

    def _steal(self) -> None:
        """Take back the jobs queued behind a job running longer than STEAL_AFTER."""
        self._steal_handle = None
        if self._closing or self.loop is None:
            return
        now = self.loop.time()
        waiting = False
        taken: list[Entry] = []
        for child in list(self._children.values()):
            if len(child.queue) <= 1 or child.exited:
                continue
            if child.entry is not None and now - child.started >= STEAL_AFTER:
                child.slow = True
                taken.extend(self._recall(child)[1])
            else:
                waiting = True
        if taken:
            taken.sort(key=lambda e: e.order)
            self._pending.extendleft(reversed(taken))
            self._dispatch()
        if waiting and self._steal_handle is None:
            self._steal_handle = self.loop.call_later(STEAL_AFTER / 2, self._steal)

    def _send(self, child: _Child, frame: bytes) -> None:
        fd = child.job_fd
        if fd is None:
            return
        if child.outbox is not None:  # still writing an earlier frame: queue behind it
            child.outbox = memoryview(bytes(child.outbox) + frame)
            return
        try:
            written = os.write(fd, frame)
        except BlockingIOError:
            written = 0
        except OSError:  # the child is gone: its exit reports the job
            return
        if written < len(frame):
            child.outbox = memoryview(frame)[written:]
            assert self.loop is not None
            self.loop.add_writer(fd, self._on_writable, child)

    def _on_writable(self, child: _Child) -> None:
        fd, out = child.job_fd, child.outbox
        assert self.loop is not None
        if fd is None or out is None:
            if fd is not None:
                self.loop.remove_writer(fd)
            return
        try:
            written = os.write(fd, out)
        except BlockingIOError:
            return
        except OSError:
            child.outbox = None
            self.loop.remove_writer(fd)
            return
        out = out[written:]
        child.outbox = out if out else None
        if not out:
            self.loop.remove_writer(fd)

    def _arm(self, child: _Child, entry: Entry, loop: asyncio.AbstractEventLoop) -> None:
        job = entry.job
        now = loop.time()
        soft, hard = job.soft_time_limit, job.time_limit
        timers = []
        if soft and (not hard or soft < hard):
            timers.append(
                loop.call_at(now + soft, self._signal_child, child, entry, signal.SIGUSR1, None)
            )
        if hard:
            timers.append(
                loop.call_at(
                    now + hard, self._signal_child, child, entry, signal.SIGKILL, "time_limit"
                )
            )
        entry.timers = timers

    def _signal_child(self, child: _Child, entry: Entry, signum: int, reason: str | None) -> None:
        if child.entry is not entry or child.exited:
            return
        if reason is not None:
            child.kill_reason = reason
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    # --- receiving outcomes ----------------------------------------------------------------

    def _on_readable(self, child: _Child) -> None:
        fd = child.result_fd
        if fd is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            child.buffer += data
            self._parse(child)
            return
        self._close_result_fd(child)
        if child.pidfd is None and not child.exited:
            self._reap(child)

    def _read_rest(self, child: _Child) -> None:
        """Take whatever a dead child wrote before it died."""
        fd = child.result_fd
        while fd is not None:
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                data = b""
            if not data:
                break
            child.buffer += data
        self._parse(child)

    def _parse(self, child: _Child) -> None:
        buf = child.buffer
        while len(buf) >= _HEADER_SIZE:
            (size,) = _unpack(buf[:_HEADER_SIZE])
            end = _HEADER_SIZE + size
            if len(buf) < end:
                return
            payload = bytes(buf[_HEADER_SIZE:end])
            del buf[:end]
            try:
                records = _child._loads(payload)
            except Exception as err:
                self._undecodable(child, err)
                continue
            for record in records:
                self._on_outcome(child, record)

    def _undecodable(self, child: _Child, err: Exception) -> None:
        entry = child.entry or (child.queue[0] if child.queue else None)
        if entry is None:
            logger.error("prefork: undecodable message from child %s: %r", child.pid, err)
            return
        job = entry.job
        bad = DecodeError(
            f"the outcome of {job.name}[{job.id}] could not be read from the pool "
            f"process: {type(err).__name__}: {err}"
        )
        self._finish(child, entry, _tracer.failure(bad, pid=child.pid))

    def _on_outcome(self, child: _Child, record: tuple[Any, ...]) -> None:
        queue = child.queue
        entry = queue[0] if queue else None
        if entry is None or entry.job.id != record[0]:
            logger.error("prefork: child %s reported job %s it was not given", child.pid, record[0])
            return
        if len(record) == 1:  # the job starts
            child.entry = entry
            loop = self.loop
            assert loop is not None
            child.started = loop.time()
            job = entry.job
            if job.time_limit or job.soft_time_limit:
                self._arm(child, entry, loop)
            call_on_start(entry, child.pid)
            return
        _, state, retval, exc, tb, runtime, requeue = record
        self._finish(child, entry, Outcome(state, retval, exc, tb, runtime, child.pid, requeue))

    def _finish(self, child: _Child, entry: Entry, outcome: Outcome) -> None:
        if child.queue and child.queue[0] is entry:
            child.queue.popleft()
        child.entry = None
        child.exclusive = False
        child.slow = False
        child.count += 1
        runtime = self._runtime = (
            self._runtime + (outcome.runtime - self._runtime) * RUNTIME_WEIGHT
        )
        self._depth = max(
            PIPELINE_DEPTH, min(PIPELINE_DEPTH_MAX, int(QUEUED_WORK / max(runtime, 1e-6)))
        )
        if entry.state == RUNNING:
            entry.state = DONE
            self._running.discard(entry)
            call_on_done(entry, outcome)
        if child.exited:
            return
        most = self.max_tasks_per_child
        if most and child.assigned >= most and not child.queue and not self._closing:
            self._retire(child)
            self._spawn()
        if self._pending:
            self._dispatch()
        self._notify()

    # --- child exits --------------------------------------------------------------------

    def _on_exit(self, child: _Child) -> None:
        """The child's pidfd is readable: it has exited."""
        self._reap(child)

    def _reap(self, child: _Child, block: bool = False) -> None:
        try:
            flags = 0 if block or child.pidfd is not None else os.WNOHANG
            pid, status = os.waitpid(child.pid, flags)
        except ChildProcessError:  # reaped by someone else: status unknown
            pid, status = child.pid, -1
        if pid == 0:  # not yet: poll
            assert self.loop is not None
            self.loop.call_later(REAP_POLL, self._reap, child)
            return
        self._child_exited(child, status)

    def _child_exited(self, child: _Child, status: int) -> None:
        if child.exited:
            return
        child.exited = True
        loop = self.loop
        assert loop is not None
        if child.pidfd is not None:
            loop.remove_reader(child.pidfd)
            self._fds.discard(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = None
        self._read_rest(child)
        self._close_result_fd(child)
        self._close_job_fd(child)
        self._children.pop(child.pid, None)
        child.handover.close()
        entry = child.entry
        child.entry = None
        queued = [e for e in child.queue if e is not entry]
        child.queue.clear()
        for waiting in reversed(queued):  # never started: another child runs them
            if waiting.state == RUNNING:
                waiting.state = PENDING
                self._running.discard(waiting)
                self._pending.appendleft(waiting)
        if entry is not None and entry.state == RUNNING:
            entry.state = DONE
            self._running.discard(entry)
            runtime = loop.time() - child.started
            if child.kill_reason == "time_limit":
                outcome = time_limit_outcome(entry.job, child.pid, runtime)
            else:
                outcome = lost_outcome(
                    _describe_exit(child, status, entry.job.id), child.pid, runtime
                )
            call_on_done(entry, outcome)
        if child.retiring and self._pending and not self._closing:
            self._dispatch()  # jobs it held came back; no replacement will ask for them
        if not child.retiring and not self._closing:
            delay = 0.0
            if child.kill_reason is None and entry is None:
                logger.error(
                    "prefork: child %s exited unexpectedly (%s); replacing it",
                    child.pid,
                    _describe_status(status),
                )
                if child.count == 0:  # died before its first job: back off if it repeats
                    self._early_deaths += 1
                    if self._early_deaths > EARLY_DEATHS_ALLOWED:
                        delay = min(
                            RESPAWN_DELAY_MAX,
                            0.1 * 2 ** (self._early_deaths - EARLY_DEATHS_ALLOWED),
                        )
            else:
                self._early_deaths = 0
            if delay:
                loop.call_later(delay, self._respawn)
            else:
                self._respawn()
        self._notify()

    def _respawn(self) -> None:
        if self._closing:
            return
        self._spawn()
        if self._pending:
            self._dispatch()

    def _close_result_fd(self, child: _Child) -> None:
        fd = child.result_fd
        if fd is not None:
            child.result_fd = None
            assert self.loop is not None
            self.loop.remove_reader(fd)
            self._fds.discard(fd)
            os.close(fd)

    # --- waiting -------------------------------------------------------------------------

    async def _wait_for(self, condition: Any) -> None:
        while not condition():
            assert self.loop is not None
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["idle-processes"] = sum(1 for c in self._children.values() if not c.queue)
        return info


def _limited(entry: Entry) -> bool:
    job = entry.job
    return bool(job.time_limit or job.soft_time_limit)


def _alive(child: _Child) -> bool:
    """Whether the child process still runs (not exited, not a zombie)."""
    if child.exited:
        return False
    try:
        with open(f"/proc/{child.pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        try:
            os.kill(child.pid, 0)
        except ProcessLookupError:
            return False
        return True


def _describe_status(status: int) -> str:
    if status < 0:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "unknown"
        return f"signal {signum} ({name})"
    return f"exitcode {os.waitstatus_to_exitcode(status)}"


def _describe_exit(child: _Child, status: int, job_id: str) -> str:
    if child.kill_reason == "terminated":
        return (
            f"Worker terminated while the task was running: {_describe_status(status)} "
            f"Job: {job_id}."
        )
    return f"Worker exited prematurely: {_describe_status(status)} Job: {job_id}."
