"""The prefork pool's child process: read jobs from a pipe, trace them, write outcomes back.

Wire format, both directions: frames of a 4-byte big-endian length followed by a pickled
*list* of records; several frames may travel in one write and be taken by one read.
Parent to child a record is a job tuple (``None`` asks the child to exit); child to parent
it is ``(job id,)`` when a job starts and an outcome tuple when it ends. Pickle is safe
here: both ends are the same program, forked, and the pipes are private to them.

A child runs one job at a time, in the order received, but the parent may send it the
next job while the current one runs, so the child never waits for a round trip through
the parent's loop. After a job the child takes whatever already arrived without waiting,
and writes the outcome together with the start of the next job in one write: one write
per job in steady state. It never touches the parent's event loop, ignores SIGINT and
SIGTERM (the parent coordinates shutdown), takes SIGUSR1 as "soft time limit now", and
always leaves with ``os._exit`` so no parent state (atexit hooks, buffered files, the
loop) is run twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import multiprocessing
import os
import pickle
import select
import signal
import struct
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, NoReturn

from ... import states
from ...exceptions import EncodeError, Retry, SoftTimeLimitExceeded
from .. import tracer as _tracer
from .base import Job, Outcome

__all__ = ["HEADER", "Handover", "encode_frame", "child_main", "job_record", "outcome_record"]

#: Frame header: payload length in bytes.
HEADER = struct.Struct(">I")
#: Bytes taken from the job pipe per read.
READ_SIZE = 1 << 16
_U64 = struct.Struct("=Q")
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_dumps, _loads = pickle.dumps, pickle.loads

#: A job as sent to a child: the fields of :class:`Job`, in order.
JobRecord = tuple[str, str, list[Any], dict[str, Any], dict[str, Any], float | None, float | None]
#: An outcome as sent back: (job id, state, retval, exc, traceback, runtime, requeue).
OutcomeRecord = tuple[str, str, Any, BaseException | None, str | None, float, bool]


class Handover:
    """Shared between the parent and one child: which handed-out jobs may still start.

    The parent hands a child jobs ahead of time; a warm shutdown must get the unstarted
    ones back at once (their messages return to the broker) and be sure the child never
    starts them. Both sides decide under one lock, so a job is either started (the child
    recorded its number first) or recalled (the parent raised the recall mark first),
    never both. Jobs are numbered 1, 2, ... in the order the child receives them.
    """

    __slots__ = ("lock", "memory")

    def __init__(self) -> None:
        self.lock = multiprocessing.Lock()
        #: Two unsigned 64-bit numbers: recalled up to, started up to.
        self.memory = mmap.mmap(-1, 16)

    def may_start(self, number: int) -> bool:
        """Child: record that job ``number`` starts, unless the parent recalled it."""
        with self.lock:
            if number <= _U64.unpack_from(self.memory, 0)[0]:
                return False
            _U64.pack_into(self.memory, 8, number)
            return True

    def recall(self, upto: int, alive: Callable[[], bool] = lambda: True) -> int | None:
        """Parent: no job numbered ``upto`` or lower may start from now on; returns the
        number of the last job that did start.

        Returns None when the child died holding the lock (``alive()`` turned false while
        waiting): nothing is known, and the child's exit reports its jobs.
        """
        while not self.lock.acquire(timeout=0.05):
            if not alive():
                return None
        try:
            _U64.pack_into(self.memory, 0, upto)
            return int(_U64.unpack_from(self.memory, 8)[0])
        finally:
            self.lock.release()

    def close(self) -> None:
        self.memory.close()


def encode_frame(records: list[Any]) -> bytes:
    """One frame holding ``records``. Raises whatever pickle raises for unpicklable data."""
    payload = _dumps(records, _PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def job_record(job: Job) -> JobRecord:
    return (
        job.id,
        job.name,
        job.args,
        job.kwargs,
        job.context,
        job.time_limit,
        job.soft_time_limit,
    )


def outcome_record(job: Job, outcome: Outcome) -> OutcomeRecord:
    return (
        job.id,
        outcome.state,
        outcome.retval,
        outcome.exc,
        outcome.traceback,
        outcome.runtime,
        outcome.requeue,
    )


# --- encoding outcomes so that the pipe never breaks ----------------------------------------


def encode_outcome(job: Job, outcome: Outcome) -> bytes:
    """The frame for ``outcome``; unpicklable values are replaced, never fatal.

    An exception is checked by a full round trip (some pickle but cannot be rebuilt, e.g.
    a required ``__init__`` argument missing from ``args``); a return value only by
    pickling, to keep the success path cheap.
    """
    exc = outcome.exc
    try:
        if exc is not None:
            _loads(_dumps(exc, _PROTOCOL))
        return encode_frame([outcome_record(job, outcome)])
    except Exception as err:
        return encode_frame([_portable_record(job, outcome, err)])


def _portable_record(job: Job, outcome: Outcome, err: Exception) -> OutcomeRecord:
    state, exc = outcome.state, outcome.exc
    if state == states.SUCCESS:
        bad = EncodeError(
            f"{job.name}[{job.id}] returned a value that cannot be sent from the pool process "
            f"to the worker: {type(outcome.retval).__qualname__} ({type(err).__name__}: {err})"
        )
        return (
            job.id,
            states.FAILURE,
            None,
            bad,
            _tracer.format_exception(bad),
            outcome.runtime,
            False,
        )
    if isinstance(exc, Retry):
        inner = exc.exc
        retry = Retry(
            exc.message, _portable(inner) if inner is not None else None, exc.when, sig=exc.sig
        )
        record = (job.id, state, None, retry, outcome.traceback, outcome.runtime, False)
        try:
            _loads(_dumps(record, _PROTOCOL))
            return record
        except Exception:
            exc = inner if inner is not None else exc
            state = states.FAILURE
    stand_in = _portable(exc) if exc is not None else None
    return (job.id, state, None, stand_in, outcome.traceback, outcome.runtime, outcome.requeue)


def _portable(exc: BaseException) -> BaseException:
    try:
        _loads(_dumps(exc, _PROTOCOL))
        return exc
    except Exception:
        return _tracer.ExceptionStandIn.from_exception(exc)


# --- the child's life -------------------------------------------------------------------------


class _SoftLimit:
    """SIGUSR1 handler: the parent says the current job's soft limit has passed."""

    __slots__ = ("ex", "message")

    def __init__(self) -> None:
        self.ex: _tracer.Execution | None = None
        self.message = ""

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        ex = self.ex
        if ex is None:
            return
        if ex.running_sync:
            raise SoftTimeLimitExceeded(self.message)
        ex.soft_async(self.message)


def _set_parent_death_signal() -> None:
    """Linux: die with SIGKILL if the parent dies, instead of running on orphaned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


def _setup(close_fds: Iterable[int], parent_pid: int, soft: _SoftLimit) -> None:
    # Signals the parent's loop hooked would go to its wakeup fd, shared after fork.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, soft)
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the death signal was set
        os._exit(1)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _serve(app: Any, job_fd: int, result_fd: int, soft: _SoftLimit, handover: Handover) -> int:
    os.set_blocking(job_fd, False)
    may_start = handover.may_start
    number = 0
    trace, execution, unpack = _tracer.trace, _tracer.Execution, HEADER.unpack
    size_of = HEADER.size
    inbox = bytearray()
    queue: deque[Any] = deque()
    out = b""  # written before the child blocks or starts a job

    def take(block: bool) -> bool:
        """Move what arrived into ``queue``; False once the parent closed the pipe."""
        while True:
            try:
                data = os.read(job_fd, READ_SIZE)
            except BlockingIOError:
                if not block:
                    return True
                select.select([job_fd], [], [])
                continue
            if not data:
                return False
            inbox.extend(data)
            while len(inbox) >= size_of:
                (size,) = unpack(inbox[:size_of])
                end = size_of + size
                if len(inbox) < end:
                    break
                queue.extend(_loads(bytes(inbox[size_of:end])))
                del inbox[:end]
            if queue or not block:
                return True

    open_ = True
    while True:
        if not queue:
            if out:
                _write_all(result_fd, out)
                out = b""
            if not open_ or not take(block=True):
                return 0
            continue
        record = queue.popleft()
        if record is None:
            if out:
                _write_all(result_fd, out)
            return 0
        number += 1
        if not may_start(number):
            continue  # recalled by the parent, which has given it back already
        job = Job(*record)
        _write_all(result_fd, out + encode_frame([(job.id,)]))
        out = b""
        ex = None
        if job.soft_time_limit:
            ex = soft.ex = execution()
            soft.message = f"soft time limit ({job.soft_time_limit}s) exceeded"
        try:
            outcome = trace(app, job, ex)
        finally:
            soft.ex = None
        out = encode_outcome(job, outcome)
        if not queue and open_:
            open_ = take(block=False)


def child_main(
    app: Any,
    job_fd: int,
    result_fd: int,
    close_fds: Iterable[int],
    parent_pid: int,
    handover: Handover,
    sigmask: Iterable[int] = (),
) -> NoReturn:
    """Body of a forked child. Never returns: the process ends here.

    Exit status 0 when the parent closed the job pipe or asked it to exit; a task raising
    ``SystemExit`` ends the child with that status (the parent reports the job lost).
    The parent forks with SIGINT, SIGTERM and SIGUSR1 blocked; they are unblocked
    (``sigmask``, the parent's mask) once this child's handlers are in place.
    """
    code = 1
    try:
        soft = _SoftLimit()
        _setup(close_fds, parent_pid, soft)
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        code = _serve(app, job_fd, result_fd, soft, handover)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
        code = 70
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
