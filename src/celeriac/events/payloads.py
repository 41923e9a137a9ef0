"""The shapes of event payloads, as they travel (spec ``celery-wire.md`` sections 4.2-4.4).

These are ``TypedDict`` types for readers and type checkers; at run time an event is a
plain ``dict`` decoded from JSON, and a peer may add fields we do not list (custom events,
newer Celery versions), so receivers must tolerate extra keys and, for fields marked
``NotRequired``, their absence.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = [
    "Event",
    "EventFields",
    "WorkerEvent",
    "TaskSentEvent",
    "TaskReceivedEvent",
    "TaskStartedEvent",
    "TaskSucceededEvent",
    "TaskFailedEvent",
    "TaskRetriedEvent",
    "TaskRejectedEvent",
    "TaskRevokedEvent",
    "TASK_EVENT_TYPES",
    "WORKER_EVENT_TYPES",
]


class EventFields(TypedDict):
    """Fields the dispatcher adds to every event."""

    type: str
    #: Sender node name (``w1@host``; clients ``gen<pid>@host``).
    hostname: str
    #: ``time.time()`` when the event was made, seconds since the epoch.
    timestamp: float
    #: Hours *west* of UTC, floor-divided (Python's ``time.timezone // 3600``).
    utcoffset: int
    pid: int
    #: Lamport clock value; None only for events sent "blind".
    clock: int | None
    #: Added by the receiver: its ``time.time()`` when the event arrived. Never sent.
    local_received: NotRequired[float]


class WorkerEvent(EventFields):
    """``worker-online`` / ``worker-heartbeat`` / ``worker-offline``."""

    #: Heartbeat interval, seconds.
    freq: NotRequired[float]
    #: Requests executing now.
    active: NotRequired[int]
    #: Tasks accepted since start.
    processed: NotRequired[int]
    loadavg: NotRequired[list[float]]
    sw_ident: NotRequired[str]
    sw_ver: NotRequired[str]
    sw_sys: NotRequired[str]


class _TaskEvent(EventFields):
    """Fields every task event carries."""

    uuid: str


class TaskSentEvent(_TaskEvent):
    """``task-sent``: a client published the task (only with ``task_send_sent_event``)."""

    name: str
    args: str
    kwargs: str
    root_id: str | None
    parent_id: str | None
    retries: int
    eta: str | None
    expires: str | None
    queue: str | None
    exchange: str | None
    routing_key: str | None


class TaskReceivedEvent(_TaskEvent):
    """``task-received``: a worker took the message."""

    #: The task name, or its ``shadow`` name when the sender set one.
    name: str
    #: ``argsrepr``: the repr of the positional arguments, not the arguments.
    args: str
    kwargs: str
    root_id: str | None
    parent_id: str | None
    retries: int
    #: ISO 8601 or None.
    eta: str | None
    expires: str | None


class TaskStartedEvent(_TaskEvent):
    """``task-started``: the pool began executing it."""


class TaskSucceededEvent(_TaskEvent):
    """``task-succeeded``: it returned."""

    #: repr of the return value, at most 1024 characters.
    result: str
    #: Seconds the execution took.
    runtime: float


class TaskFailedEvent(_TaskEvent):
    """``task-failed``: it raised (or its task is not registered on the worker)."""

    #: repr of the exception, e.g. ``"ValueError('bad value', 7)"``.
    exception: str
    traceback: NotRequired[str | None]


class TaskRetriedEvent(_TaskEvent):
    """``task-retried``: it asked to run again later."""

    exception: str
    traceback: str | None


class TaskRejectedEvent(_TaskEvent):
    """``task-rejected``: the worker rejected the message."""

    requeue: bool


class TaskRevokedEvent(_TaskEvent):
    """``task-revoked``: it was revoked, expired, or terminated."""

    terminated: bool
    signum: int | str | None
    expired: bool


#: Any event, as received (extra fields allowed at run time).
Event = dict[str, Any]

#: The task event types a worker or client sends, in the order of a task's life.
TASK_EVENT_TYPES: tuple[str, ...] = (
    "task-sent",
    "task-received",
    "task-started",
    "task-retried",
    "task-rejected",
    "task-revoked",
    "task-failed",
    "task-succeeded",
)
WORKER_EVENT_TYPES: tuple[str, ...] = ("worker-online", "worker-heartbeat", "worker-offline")
