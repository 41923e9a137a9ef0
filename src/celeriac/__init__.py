"""celeriac: a distributed task queue with Celery's architecture, rebuilt on asyncio.

The public names are importable from here; everything else lives in the packages named
in the design (``messaging``, ``backends``, ``worker``, ...).
"""

from __future__ import annotations

from . import states
from .app import Celeriac, Celery, current_app, shared_task
from .canvas import Signature, signature
from .exceptions import (
    CeleriacError,
    ConfigurationError,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from .result import AsyncResult
from .task import Task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Celeriac",
    "Celery",
    "CeleriacError",
    "ConfigurationError",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Reject",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "WorkerLostError",
    "current_app",
    "shared_task",
    "signature",
    "states",
]
