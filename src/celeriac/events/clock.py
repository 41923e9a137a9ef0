"""The Lamport clock that orders events across nodes.

Wall clocks on two machines disagree, so monitors cannot sort events from different workers
by ``timestamp`` alone. Each node keeps a counter: it *forwards* it for every event it
sends and *adjusts* it past every clock value it receives, which gives a total order
consistent with causality when ties are broken by node name (Lamport, 1978). Celery's
workers and monitors do the same (spec ``celery-wire.md`` section 4.6), so our clock values
and theirs interleave correctly.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["LamportClock", "TimeTuple", "timetuple"]


class LamportClock:
    """A thread-safe Lamport clock.

    Every sent event forwards it, so :meth:`forward` is one call of a C counter (atomic
    under the GIL) rather than a lock round; only :meth:`adjust`, which may jump, locks.

    Args:
        initial_value: Where the counter starts (a worker restores it from its state db).
    """

    __slots__ = ("_counter", "_lock", "forward")

    def __init__(self, initial_value: int = 0) -> None:
        self._lock = threading.Lock()
        self._restart(int(initial_value))

    def _restart(self, value: int) -> None:
        self._counter = itertools.count(value + 1)
        #: Advance for a local event; returns the new value to stamp it with.
        self.forward: Callable[[], int] = self._counter.__next__

    @property
    def value(self) -> int:
        """The last value handed out (reading it does not advance the clock)."""
        return int(repr(self._counter)[len("count(") : -1]) - 1

    def adjust(self, other: int) -> int:
        """Move past a received clock value: ``max(value, other) + 1``."""
        with self._lock:
            value = self.forward()
            if int(other) >= value:
                value = int(other) + 1
                self._restart(value)
            return value

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
