"""Events: every state change in the cluster, broadcast; monitors rebuild the cluster from them.

:class:`EventDispatcher` sends (workers and clients), :class:`EventReceiver` receives,
:class:`State` rebuilds workers and tasks from what was received. The wire format is
Celery's (spec ``celery-wire.md`` section 4), so Celery's monitors read our events and we
read theirs. The tools built on these live beside them: ``dumper`` (``celeriac events
--dump``), ``snapshot`` (cameras), ``top`` (the terminal UI).
"""

from .clock import LamportClock, TimeTuple, timetuple
from .dispatcher import (
    DEFAULT_EXCHANGE_NAME,
    DispatcherStatistics,
    EventDispatcher,
    event_exchange,
    group_from,
    routing_key_for,
)
from .payloads import (
    TASK_EVENT_TYPES,
    WORKER_EVENT_TYPES,
    Event,
    EventFields,
    TaskFailedEvent,
    TaskReceivedEvent,
    TaskRejectedEvent,
    TaskRetriedEvent,
    TaskRevokedEvent,
    TaskSentEvent,
    TaskStartedEvent,
    TaskSucceededEvent,
    WorkerEvent,
)
from .receiver import EventReceiver, fix_event
from .state import State, Task, TaskIndex, Worker

__all__ = [
    "DEFAULT_EXCHANGE_NAME",
    "DispatcherStatistics",
    "Event",
    "EventDispatcher",
    "EventFields",
    "EventReceiver",
    "LamportClock",
    "State",
    "TASK_EVENT_TYPES",
    "Task",
    "TaskFailedEvent",
    "TaskIndex",
    "TaskReceivedEvent",
    "TaskRejectedEvent",
    "TaskRetriedEvent",
    "TaskRevokedEvent",
    "TaskSentEvent",
    "TaskStartedEvent",
    "TaskSucceededEvent",
    "TimeTuple",
    "WORKER_EVENT_TYPES",
    "Worker",
    "WorkerEvent",
    "event_exchange",
    "fix_event",
    "group_from",
    "routing_key_for",
    "timetuple",
]
