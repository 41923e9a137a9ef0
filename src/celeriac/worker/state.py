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
#: Most stamp values remembered by revoke_by_stamped_headers (the oldest go first).
REVOKED_STAMPS_MAX = 10_000


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
        #: Stamped header -> revoked values (``revoke_by_stamped_headers``); empty unless
        #: used, so the per-message check is one truthiness test.
        self.revoked_stamps: dict[str, LimitedSet] = {}
        #: Finished executions per task name.
        self.total_count: Counter[str] = Counter()
        self.all_total_count = 0

    def revoke_stamps(self, wanted: dict[str, set[str]]) -> None:
        """Remember stamp values whose tasks are revoked, for messages yet to come."""
        for key, values in wanted.items():
            known = self.revoked_stamps.get(key)
            if known is None:
                known = self.revoked_stamps[key] = LimitedSet(
                    maxlen=REVOKED_STAMPS_MAX, expires=REVOKE_EXPIRES
                )
            for value in values:
                known.add(value)

    def stamp_revoked(self, headers: dict[str, Any]) -> bool:
        """True when one of the message's stamps has a revoked value.

        A stamp is read from the ``stamps`` header or, as Celery writes them, from a header
        of its own name that ``stamped_headers`` lists.
        """
        stamps = headers.get("stamps")
        if not isinstance(stamps, dict):
            stamps = {}
        named = headers.get("stamped_headers")
        named = named if isinstance(named, list | tuple) else ()
        for key, values in self.revoked_stamps.items():
            # A header of the stamp's own name counts only if the message says it is a
            # stamp, so revoking "task=..." cannot drop every task of that name.
            got = stamps.get(key, headers.get(key) if key in named else None)
            if got is None:
                continue
            for value in got if isinstance(got, list | tuple) else (got,):
                if value is not None and str(value) in values:
                    return True
        return False

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
