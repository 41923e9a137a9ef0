"""The Lamport clock that orders events across nodes.

Wall clocks on two machines disagree, so monitors cannot sort events from different workers
by ``timestamp`` alone. Each node keeps a counter: it *forwards* it for every event it
sends and *adjusts* it past every clock value it receives, which gives a total order
consistent with causality when ties are broken by node name (Lamport, 1978). Celery's
workers and monitors do the same (spec ``celery-wire.md`` section 4.6), so our clock values
and theirs interleave correctly.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

__all__ = ["LamportClock", "TimeTuple", "timetuple"]


class LamportClock:
    """A thread-safe Lamport clock.

    Args:
        initial_value: Where the counter starts (a worker restores it from its state db).
    """

    __slots__ = ("_lock", "value")

    def __init__(self, initial_value: int = 0) -> None:
        self.value = int(initial_value)
        self._lock = threading.Lock()

    def forward(self) -> int:
        """Advance for a local event; returns the new value to stamp it with."""
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: int) -> int:
        """Move past a received clock value: ``max(value, other) + 1``."""
        with self._lock:
            self.value = max(self.value, int(other)) + 1
            return self.value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<LamportClock {self.value}>"


class TimeTuple(NamedTuple):
    """How monitors order events: by clock, then timestamp, then origin node."""

    clock: int
    timestamp: float
    origin: str


def timetuple(clock: int | None, timestamp: float | None, origin: str) -> TimeTuple:
    """The sort key of an event; a missing clock sorts first, a missing timestamp as 0."""
    return TimeTuple(clock or 0, timestamp or 0.0, origin)
