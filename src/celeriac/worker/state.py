"""Worker-local state: what this worker holds, runs and has been told to skip.

Every structure here is bounded: reserved requests by the prefetch limit, active ones by
the pool size, revoked ids by :class:`~celeriac.utils.collections.LimitedSet`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from ..utils.collections import LimitedSet

if TYPE_CHECKING:
    from .request import Request

__all__ = ["WorkerState", "REVOKES_MAX", "REVOKE_EXPIRES"]

#: How many revoked ids are remembered (Celery's default), and for how long (seconds).
REVOKES_MAX = 50_000
REVOKE_EXPIRES = 10_800.0


class WorkerState:
    """Requests this worker has received (reserved), is running (active), and counters."""

    def __init__(self) -> None:
        #: Received and not yet started, by task id.
        self.reserved: dict[str, Request] = {}
        #: Started and not yet finished, by task id.
        self.active: dict[str, Request] = {}
        #: Held until their ETA (or a rate-limit token), by task id.
        self.scheduled: dict[str, Request] = {}
        self.revoked = LimitedSet(maxlen=REVOKES_MAX, expires=REVOKE_EXPIRES)
        #: Finished executions per task name.
        self.total_count: Counter[str] = Counter()
        self.all_total_count = 0

    def task_reserved(self, request: Request) -> None:
        self.reserved[request.id] = request

    def task_started(self, request: Request) -> None:
        self.reserved.pop(request.id, None)
        self.active[request.id] = request

    def task_finished(self, request: Request) -> None:
        self.reserved.pop(request.id, None)
        self.active.pop(request.id, None)
        self.total_count[request.name] += 1
        self.all_total_count += 1

    def info(self) -> dict[str, Any]:
        return {
            "reserved": len(self.reserved),
            "active": len(self.active),
            "scheduled": len(self.scheduled),
            "revoked": len(self.revoked),
            "total": dict(self.total_count),
        }
