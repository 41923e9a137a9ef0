"""The prefork pool's child process: read jobs from a pipe, trace them, write outcomes back.

Wire format, both directions: frames of a 4-byte big-endian length followed by a pickled
*list* of records, so several records can travel in one write and one read. Parent to
child a record is a job tuple (``None`` asks the child to exit); child to parent it is an
outcome tuple. Pickle is safe here: both ends are the same program, forked, and the pipes
are private to them.

A child runs one job at a time and never touches the parent's event loop. It ignores
SIGINT and SIGTERM (the parent coordinates shutdown), takes SIGUSR1 as "soft time limit
now", and always leaves with ``os._exit`` so no parent state (atexit hooks, buffered
files, the loop) is run twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import struct
import sys
import traceback
from collections.abc import Iterable
from types import FrameType
from typing import Any, NoReturn

from ... import states
from ...exceptions import EncodeError, Retry, SoftTimeLimitExceeded
from .. import tracer as _tracer
from .base import Job, Outcome

__all__ = ["HEADER", "encode_frame", "child_main", "job_record", "outcome_record"]

#: Frame header: payload length in bytes.
HEADER = struct.Struct(">I")
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_dumps, _loads = pickle.dumps, pickle.loads

#: A job as sent to a child: the fields of :class:`Job`, in order.
JobRecord = tuple[str, str, list[Any], dict[str, Any], dict[str, Any], float | None, float | None]
#: An outcome as sent back: (job id, state, retval, exc, traceback, runtime, requeue).
OutcomeRecord = tuple[str, str, Any, BaseException | None, str | None, float, bool]


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


def _serve(app: Any, job_fd: int, result_fd: int, soft: _SoftLimit) -> int:
    reader = open(job_fd, "rb", buffering=1 << 16)  # noqa: SIM115 - lives as long as the child
    read, unpack, trace = reader.read, HEADER.unpack, _tracer.trace
    execution = _tracer.Execution
    while True:
        header = read(4)
        if len(header) < 4:
            return 0  # the parent closed the pipe: time to go
        (size,) = unpack(header)
        payload = read(size)
        if len(payload) < size:
            return 0
        for record in _loads(payload):
            if record is None:
                return 0
            job = Job(*record)
            ex = None
            if job.soft_time_limit:
                ex = soft.ex = execution()
                soft.message = f"soft time limit ({job.soft_time_limit}s) exceeded"
            try:
                outcome = trace(app, job, ex)
            finally:
                soft.ex = None
            _write_all(result_fd, encode_outcome(job, outcome))


def child_main(
    app: Any,
    job_fd: int,
    result_fd: int,
    close_fds: Iterable[int],
    parent_pid: int,
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
        code = _serve(app, job_fd, result_fd, soft)
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
