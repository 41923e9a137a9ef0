"""The Lamport clock: forward on send, adjust past what is received."""

from __future__ import annotations

from tests.threads import on_threads

from celeriac.events import LamportClock, timetuple


def test_forward_counts_up_from_the_initial_value() -> None:
    clock = LamportClock(initial_value=5)
    assert [clock.forward(), clock.forward()] == [6, 7]
    assert int(clock) == 7
    assert repr(clock) == "<LamportClock 7>"


def test_adjust_moves_past_a_larger_received_value() -> None:
    clock = LamportClock()
    assert clock.adjust(10) == 11
    # A smaller received value still advances by one: the receipt is itself an event.
    assert clock.adjust(3) == 12


def test_forward_is_thread_safe() -> None:
    # Given four threads forwarding the same clock
    clock = LamportClock()
    handed = on_threads(lambda: [clock.forward() for _ in range(2000)], 4)
    seen = [v for mine in handed for v in mine]
    # Then every value was handed out exactly once
    assert sorted(seen) == list(range(1, 8001))


def test_timetuple_orders_by_clock_then_timestamp_then_origin() -> None:
    events = [
        timetuple(2, 1.0, "b"),
        timetuple(1, 9.0, "z"),
        timetuple(2, 1.0, "a"),
        timetuple(None, None, "c"),
    ]
    assert [(t.clock, t.origin) for t in sorted(events)] == [(0, "c"), (1, "z"), (2, "a"), (2, "b")]
