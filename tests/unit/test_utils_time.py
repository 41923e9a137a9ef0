"""Time helpers: ISO-8601 on the wire, Celery's utcoffset convention, humanized durations."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac.utils.time import (
    adjust_timestamp,
    from_iso8601,
    humanize_seconds,
    maybe_make_aware,
    now_utc,
    timedelta_seconds,
    to_iso8601,
    utcoffset,
)

PLUS_TWO = timezone(timedelta(hours=2))


def test_now_utc_is_aware_utc() -> None:
    now = now_utc()
    assert now.tzinfo is UTC
    assert abs(now.timestamp() - time.time()) < 60


def test_maybe_make_aware_interprets_naive_in_the_given_zone_and_keeps_aware() -> None:
    naive = datetime(2024, 5, 1, 12, 0)
    assert maybe_make_aware(naive) == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert maybe_make_aware(naive, PLUS_TWO).utcoffset() == timedelta(hours=2)
    aware = datetime(2024, 5, 1, 12, 0, tzinfo=PLUS_TWO)
    assert maybe_make_aware(aware) is aware
    with pytest.raises(TypeError, match="expected a datetime"):
        maybe_make_aware("2024-05-01")  # type: ignore[arg-type]


def test_to_iso8601_always_carries_an_offset() -> None:
    assert to_iso8601(datetime(2024, 5, 1, 12, 0)) == "2024-05-01T12:00:00+00:00"
    assert to_iso8601(datetime(2024, 5, 1, 12, 0, tzinfo=PLUS_TWO)) == "2024-05-01T12:00:00+02:00"


def test_from_iso8601_reads_celery_and_z_forms_and_names_bad_input() -> None:
    assert from_iso8601("2024-05-01T12:00:00.123456+00:00") == datetime(
        2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC
    )
    assert from_iso8601("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert from_iso8601("2024-05-01T12:00:00").tzinfo is None
    with pytest.raises(ValueError, match="not an ISO-8601 date/time: 'tomorrow'"):
        from_iso8601("tomorrow")
    with pytest.raises(TypeError, match="expected an ISO-8601 string"):
        from_iso8601(1714564800)  # type: ignore[arg-type]


@given(st.datetimes(timezones=st.just(UTC)))
def test_iso8601_round_trips(dt: datetime) -> None:
    assert from_iso8601(to_iso8601(dt)) == dt


@pytest.mark.parametrize(
    ("seconds_west", "hours"),
    [(0, 0), (-3600, -1), (18000, 5), (-19800, -6), (12600, 3), (-45900, -13)],
)
def test_utcoffset_is_hours_west_floor_divided_like_celery(seconds_west: int, hours: int) -> None:
    # UTC+1 -> -1, UTC-5 -> 5, UTC+5:30 -> -6 (floor), UTC-3:30 -> 3
    assert utcoffset(seconds_west) == hours


def test_utcoffset_without_argument_follows_the_local_zone() -> None:
    dst = time.localtime().tm_isdst > 0
    assert utcoffset() == (time.altzone if dst else time.timezone) // 3600


def test_adjust_timestamp_moves_between_offsets() -> None:
    assert adjust_timestamp(1000.0, offset=-2, here=-2) == 1000.0
    assert adjust_timestamp(1000.0, offset=-2, here=0) == 1000.0 + 2 * 3600


def test_timedelta_seconds_is_never_negative() -> None:
    assert timedelta_seconds(timedelta(minutes=2, milliseconds=500)) == 120.5
    assert timedelta_seconds(timedelta(seconds=-5)) == 0.0


@pytest.mark.parametrize(
    ("secs", "kwargs", "text"),
    [
        (0, {}, "now"),
        (1, {}, "1.00 second"),
        (60, {}, "1.00 minute"),
        (90, {}, "1.50 minutes"),
        (7200, {"prefix": "in "}, "in 2.00 hours"),
        (86400 * 3, {}, "3.00 days"),
        (0.5, {}, "now"),
        (0.5, {"microseconds": True}, "0.50 seconds"),
        (0, {"prefix": "in ", "now": "right away"}, "right away"),
    ],
)
def test_humanize_seconds(secs: float, kwargs: dict[str, object], text: str) -> None:
    assert humanize_seconds(secs, **kwargs) == text  # type: ignore[arg-type]
