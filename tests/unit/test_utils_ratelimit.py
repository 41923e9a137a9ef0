"""Rate limit strings and the token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from celeriac.utils.ratelimit import TokenBucket, parse_rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [
        ("10/s", 10.0),
        ("100/m", 100 / 60),
        ("5/h", 5 / 3600),
        ("0.5/s", 0.5),
        (" 20 / m ", 20 / 60),
        ("10/", 10.0),
        ("7", 7.0),
        (3, 3.0),
        (2.5, 2.5),
        (None, 0.0),
        ("", 0.0),
        (0, 0.0),
        ("0/s", 0.0),
    ],
)
def test_parse_rate(rate: str | int | float | None, per_second: float) -> None:
    assert parse_rate(rate) == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("10/d", "invalid rate limit '10/d': unit must be 's', 'm' or 'h'"),
        ("ten/s", "invalid rate limit 'ten/s'"),
        ("-1/s", "must be a finite number >= 0"),
        ("inf", "must be a finite number >= 0"),
        (float("nan"), "must be a finite number >= 0"),
    ],
)
def test_parse_rate_rejects_bad_input_naming_it(rate: str | float, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_rate(rate)


def test_parse_rate_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        parse_rate([10])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_rate(True)


def test_bucket_starts_full_and_refills_at_the_fill_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(fill_rate=2.0, capacity=2, clock=clock)
    assert bucket.can_consume() and bucket.can_consume()
    assert not bucket.can_consume()
    assert bucket.expected_time() == pytest.approx(0.5)
    clock.now += 0.25
    assert not bucket.can_consume()
    assert bucket.expected_time() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.can_consume()


def test_bucket_is_all_or_nothing_and_capped_at_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(fill_rate=1.0, capacity=3, clock=clock)
    assert not bucket.can_consume(4)
    assert bucket.tokens == pytest.approx(3)
    clock.now += 1000
    assert bucket.tokens == pytest.approx(3)
    assert bucket.can_consume(3)
    assert bucket.expected_time(2) == pytest.approx(2.0)


def test_idle_time_at_capacity_does_not_count_as_refill() -> None:
    clock = Clock()
    bucket = TokenBucket(fill_rate=1.0, capacity=1, clock=clock)
    clock.now += 60  # idle while full
    assert bucket.can_consume()
    assert not bucket.can_consume()  # no burst from the idle minute


def test_bucket_rejects_unusable_settings() -> None:
    with pytest.raises(ValueError, match="fill_rate must be > 0"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="capacity must be > 0"):
        TokenBucket(1, capacity=0)
    assert "1/s" in repr(TokenBucket(1))
