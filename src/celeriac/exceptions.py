"""The exception tree.

One root, :class:`CeleriacError`, and branches named for what the caller should do next:
fix the configuration, fix the message, register the task, reconnect, wait longer.

Exceptions that Celery users already catch by name keep Celery's names and bases, so an
``except SoftTimeLimitExceeded`` written for Celery behaves the same here. Interrupts the
worker raises inside a running task derive from ``BaseException`` so that a task's broad
``except Exception`` cannot swallow them.
"""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "CeleriacError",
    "ConfigurationError",
    "ImproperlyConfigured",
    "SerializationError",
    "ContentDisallowed",
    "DecodeError",
    "EncodeError",
    "NotRegistered",
    "AlreadyRegistered",
    "BrokerConnectionError",
    "ConnectionClosedError",
    "ConnectionBrokenError",
    "OperationalError",
    "TimeoutError",
    "PublishTimeoutError",
    "ResultTimeoutError",
    "TaskError",
    "Retry",
    "Reject",
    "Ignore",
    "MaxRetriesExceededError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "SoftTimeLimitExceeded",
    "WorkerLostError",
    "RemoteTaskError",
    "InvalidTaskMessage",
    "WorkerShutdown",
    "WorkerTerminate",
]


class CeleriacError(Exception):
    """Root of every error celeriac raises on purpose."""


# --- configuration -----------------------------------------------------------------


class ConfigurationError(CeleriacError, ValueError):
    """A setting is unknown or has a value that cannot work.

    Carries the offending ``key`` and, for unknown keys, the closest known ``suggestion``.
    """

    def __init__(self, message: str, key: str | None = None, suggestion: str | None = None):
        super().__init__(message)
        self.key = key
        self.suggestion = suggestion

    @classmethod
    def unknown_key(
        cls, key: str, known: Iterable[str], what: str = "setting"
    ) -> ConfigurationError:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        suggestion = close[0] if close else None
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        return cls(f"unknown {what} {key!r}{hint}", key=key, suggestion=suggestion)


#: Celery's name for the same condition.
ImproperlyConfigured = ConfigurationError


# --- serialization -----------------------------------------------------------------


class SerializationError(CeleriacError):
    """Base for encode and decode failures."""


class EncodeError(SerializationError):
    """A value could not be serialized with the chosen codec."""


class DecodeError(SerializationError):
    """A payload could not be decoded. Keeps the raw bytes so nothing is lost."""

    def __init__(self, message: str, *, body: bytes | None = None, content_type: str | None = None):
        super().__init__(message)
        self.body = body
        self.content_type = content_type


class ContentDisallowed(DecodeError):
    """The payload's content type is not in ``accept_content``: it is refused undecoded."""


class InvalidTaskMessage(DecodeError):
    """A message decoded but is not a valid task message (missing headers, bad body shape)."""


# --- registry ----------------------------------------------------------------------


class NotRegistered(CeleriacError, KeyError):
    """No task of that name is registered in this app (check imports / ``include``)."""

    def __str__(self) -> str:
        return repr(self.args[0]) if self.args else "NotRegistered"


class AlreadyRegistered(CeleriacError):
    """Two different functions were registered under one task name."""


# --- broker connections ------------------------------------------------------------


class BrokerConnectionError(CeleriacError, ConnectionError):
    """The broker cannot be reached or the connection failed."""


class ConnectionClosedError(BrokerConnectionError):
    """The connection was closed by us: using it again is a programming error."""


class ConnectionBrokenError(BrokerConnectionError):
    """The connection broke underneath us: reconnecting may help."""


#: kombu's name for a broker operation that failed; kept for callers porting code.
OperationalError = BrokerConnectionError


# --- timeouts ----------------------------------------------------------------------


class TimeoutError(CeleriacError, builtins.TimeoutError):
    """An operation did not finish in time. Subclasses say which phase."""


class PublishTimeoutError(TimeoutError):
    """The broker did not confirm a publish in time: the message may or may not be queued."""


class ResultTimeoutError(TimeoutError):
    """``AsyncResult.get`` gave up waiting; the task may still complete later."""


# --- task outcomes -----------------------------------------------------------------


class TaskError(CeleriacError):
    """Base for errors about a task's execution."""


class Retry(TaskError):
    """Raised by ``Task.retry`` to end the current attempt; the worker schedules the next.

    Not a failure: the task's state becomes RETRY.
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | None = None,
        *,
        sig: Any = None,
    ):
        self.message = message
        self.exc = exc
        self.when = when
        self.sig = sig
        super().__init__(message or (f"Retry in {when}s" if when is not None else "Retry"))

    def humanize(self) -> str:
        return f"in {self.when}s" if isinstance(self.when, int | float) else f"at {self.when}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.exc, self.when), {"sig": self.sig})


class Reject(TaskError):
    """Raised by a task to reject its message, optionally requeueing it."""

    def __init__(self, reason: Any = None, requeue: bool = False):
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class Ignore(TaskError):
    """Raised by a task to end without storing any state."""


class MaxRetriesExceededError(TaskError):
    """``Task.retry`` was called past ``max_retries``."""


class TaskRevokedError(TaskError):
    """The task was revoked (or expired) before it could complete."""


class TimeLimitExceeded(TaskError):
    """The hard time limit passed: the execution was killed (or abandoned, per pool)."""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a running task when its soft time limit passes.

    Derives from ``Exception`` (as in Celery and billiard) so that existing
    ``except SoftTimeLimitExceeded`` and cleanup code keep working.
    """


class WorkerLostError(Exception):
    """The process executing the task died (signal, crash, out of memory).

    Celery's base class (``Exception``) is kept on purpose.
    """


class RemoteTaskError(TaskError):
    """A task failed with an exception type this process will not rebuild.

    Only allow-listed exception types are re-created from result metadata (rebuilding
    arbitrary classes by name is code execution); others arrive as this, carrying the
    original names as strings.
    """

    def __init__(self, exc_type: str, exc_module: str | None, exc_message: Any):
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.exc_message = exc_message
        args = exc_message if isinstance(exc_message, list | tuple) else [exc_message]
        qual = f"{exc_module}.{exc_type}" if exc_module else exc_type
        super().__init__(f"{qual}: {', '.join(str(a) for a in args)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exc_type, self.exc_module, self.exc_message))


# --- worker interrupts (BaseException on purpose) ----------------------------------


class WorkerShutdown(BaseException):
    """Raised to begin a warm shutdown of the worker."""


class WorkerTerminate(BaseException):
    """Raised to begin a cold shutdown of the worker."""


class Terminated(BaseException):
    """Raised inside a task stopped by ``revoke(terminate=True)`` in a pool that cannot
    kill it (the threads pool); it is not an :class:`Exception`, so task code that
    catches ``Exception`` does not swallow it."""
