"""Time helpers shared by the protocol, the worker and the event tools.

Everything on the wire is either an ISO-8601 string (``eta``, ``expires``) or a float
timestamp plus an hour offset (events). These helpers keep the two conversions in one
place so the client, the worker and the monitors agree on them, and on Celery's quirks:
an event's ``utcoffset`` counts hours *west* of UTC.
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime, timedelta, tzinfo

__all__ = [
    "UTC",
    "now_utc",
    "maybe_make_aware",
    "to_iso8601",
    "from_iso8601",
    "utcoffset",
    "adjust_timestamp",
    "timedelta_seconds",
    "humanize_seconds",
]

#: Units for :func:`humanize_seconds`, largest first: (singular name, seconds per unit).
_TIME_UNITS: tuple[tuple[str, float], ...] = (
    ("day", 86400.0),
    ("hour", 3600.0),
    ("minute", 60.0),
    ("second", 1.0),
)


def now_utc() -> datetime:
    """The current time as an aware UTC datetime.

    Aware on purpose: comparing a naive ``eta`` with an aware one raises, and naive
    datetimes mean different instants on machines in different zones.
    """
    return datetime.now(UTC)


def maybe_make_aware(dt: datetime, tz: tzinfo = UTC) -> datetime:
    """Return ``dt`` unchanged when aware, else the same wall time interpreted in ``tz``.

    Args:
        dt: The datetime to normalise.
        tz: The zone a naive ``dt`` is taken to be in (UTC unless the app says otherwise).

    Raises:
        TypeError: ``dt`` is not a datetime.
    """
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {type(dt).__name__}: {dt!r}")
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        return dt.replace(tzinfo=tz)
    return dt


def to_iso8601(dt: datetime) -> str:
    """Format ``dt`` as ISO-8601 for the wire (``eta``/``expires``).

    A naive datetime is taken as UTC, so the string always carries an offset and a
    worker in another zone reads the same instant.

    Raises:
        TypeError: ``dt`` is not a datetime.
    """
    return maybe_make_aware(dt).isoformat()


def from_iso8601(value: str) -> datetime:
    """Parse an ISO-8601 string from the wire.

    Uses :meth:`datetime.fromisoformat` (Python 3.11 accepts ``Z``, basic and extended
    forms), which is far faster than a regex parser. The result is naive when the string
    carries no offset; pass it through :func:`maybe_make_aware` to pick the zone.

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: ``value`` is not ISO-8601; the message quotes it.
    """
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO-8601 string, got {type(value).__name__}: {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO-8601 date/time: {value!r}") from None


def utcoffset(seconds_west: int | None = None) -> int:
    """The local offset from UTC in whole hours *west* of UTC, as Celery's events carry it.

    Celery computes ``time.timezone // 3600`` (``time.altzone`` during DST): floor
    division of seconds west, so UTC+1 gives ``-1``, UTC-5 gives ``5`` and UTC+5:30 gives
    ``-6``. Receivers subtract it back with the same rule, so matching it exactly keeps
    timestamps from Celery peers and ours aligned.

    Args:
        seconds_west: Offset to convert instead of the local one (``time.timezone``
            convention: positive west of UTC).
    """
    if seconds_west is None:
        seconds_west = _time.altzone if _time.localtime().tm_isdst > 0 else _time.timezone
    return int(seconds_west) // 3600


def adjust_timestamp(ts: float, offset: int | float, here: int | None = None) -> float:
    """Move an event timestamp sent with ``offset`` into this machine's local reckoning.

    Args:
        ts: The event's ``timestamp``.
        offset: The event's ``utcoffset`` (hours west of UTC).
        here: The local offset; :func:`utcoffset` by default.
    """
    local = utcoffset() if here is None else here
    return ts - (offset - local) * 3600


def timedelta_seconds(delta: timedelta) -> float:
    """Total seconds of ``delta``, never negative (a past ETA means "now")."""
    return max(delta.total_seconds(), 0.0)


def humanize_seconds(
    secs: float,
    prefix: str = "",
    sep: str = "",
    now: str = "now",
    microseconds: bool = False,
) -> str:
    """Seconds as text for logs and the banner, in Celery's format.

    ``60`` gives ``"1.00 minute"``, ``7200`` gives ``"2.00 hours"``; zero (and, unless
    ``microseconds``, anything below a second) gives ``now``.

    Args:
        secs: The duration.
        prefix: Put before the number, e.g. ``"in "`` (not before ``now``).
        sep: Put between ``prefix`` and the number.
        now: The text for a zero duration.
        microseconds: Show sub-second durations as ``"0.50 seconds"``.
    """
    value = round(float(secs), 2)
    for unit, divider in _TIME_UNITS:
        if value >= divider:
            amount = value / divider
            plural = "" if amount == 1 else "s"
            return f"{prefix}{sep}{amount:.2f} {unit}{plural}"
    if microseconds and value > 0.0:
        return f"{prefix}{sep}{value:.2f} seconds"
    return now
