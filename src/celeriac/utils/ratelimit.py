"""Task rate limits: Celery's ``"10/s"`` strings and the token bucket that enforces them.

The worker keeps one :class:`TokenBucket` per rate-limited task type; the strategy asks
:meth:`TokenBucket.can_consume` before handing a request to the pool and, when refused,
waits :meth:`TokenBucket.expected_time` on the timer instead of polling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["parse_rate", "TokenBucket"]

#: Seconds per unit of a rate string's suffix.
_UNIT_SECONDS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: str | int | float | None) -> float:
    """Convert a rate limit to tokens per second; ``0.0`` means unlimited.

    ``"10/s"``, ``"100/m"`` and ``"5/h"`` are per second, minute and hour; a bare
    number (or numeric string) is per second, as in Celery. ``None``, ``""`` and ``0``
    disable the limit.

    Raises:
        ValueError: Unknown unit, not a number, negative, or not finite; the message
            quotes the input.
        TypeError: Neither a string nor a number.
    """
    if rate is None:
        return 0.0
    if isinstance(rate, bool):
        raise TypeError(f"rate limit must be a string like '10/s' or a number, got {rate!r}")
    if isinstance(rate, int | float):
        value = float(rate)
    elif isinstance(rate, str):
        text = rate.strip()
        if not text:
            return 0.0
        amount, sep, unit = text.partition("/")
        unit = unit.strip() or "s"  # Celery reads "10/" as per second
        if sep and unit not in _UNIT_SECONDS:
            raise ValueError(f"invalid rate limit {rate!r}: unit must be 's', 'm' or 'h'")
        try:
            value = float(amount)
        except ValueError:
            raise ValueError(
                f"invalid rate limit {rate!r}: expected '<number>/<s|m|h>', e.g. '10/s'"
            ) from None
        value /= _UNIT_SECONDS[unit] if sep else 1.0
    else:
        raise TypeError(
            f"rate limit must be a string like '10/s' or a number, got {type(rate).__name__}"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"invalid rate limit {rate!r}: must be a finite number >= 0")
    return value


class TokenBucket:
    """A token bucket: ``fill_rate`` tokens per second, holding at most ``capacity``.

    Starts full. Not thread-safe: the worker uses it from its event loop only.

    Args:
        fill_rate: Tokens added per second (as returned by :func:`parse_rate`); > 0.
        capacity: Most tokens held, i.e. the largest burst allowed.
        clock: Monotonic time source, replaceable for tests.

    Raises:
        ValueError: ``fill_rate`` or ``capacity`` not positive.
    """

    __slots__ = ("_clock", "_stamp", "_tokens", "capacity", "fill_rate")

    def __init__(
        self,
        fill_rate: float,
        capacity: float = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not fill_rate > 0 or not math.isfinite(fill_rate):
            raise ValueError(f"TokenBucket fill_rate must be > 0 tokens/s, got {fill_rate!r}")
        if not capacity > 0 or not math.isfinite(capacity):
            raise ValueError(f"TokenBucket capacity must be > 0, got {capacity!r}")
        self.fill_rate = float(fill_rate)
        self.capacity = float(capacity)
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> float:
        now = self._clock()
        # Advance the stamp even when full, so idle time at capacity never counts as
        # refill later (which would allow a burst right after draining).
        if self._tokens < self.capacity:
            elapsed = max(now - self._stamp, 0.0)
            self._tokens = min(self.capacity, self._tokens + elapsed * self.fill_rate)
        self._stamp = now
        return self._tokens

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        return self._refill()

    def can_consume(self, tokens: float = 1) -> bool:
        """Take ``tokens`` if that many are available; all or nothing.

        Returns:
            Whether the tokens were taken.
        """
        if tokens <= self._refill():
            self._tokens -= tokens
            return True
        return False

    def expected_time(self, tokens: float = 1) -> float:
        """Seconds until ``tokens`` are available (0.0 if they are now). Takes nothing."""
        available = self._refill()
        return max(tokens - available, 0.0) / self.fill_rate

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__}: {self.fill_rate:g}/s, "
            f"capacity={self.capacity:g}, tokens={self._tokens:.2f}>"
        )
