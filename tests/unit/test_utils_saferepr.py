"""saferepr: bounded, never raising, cheap on huge arguments."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac.utils.saferepr import saferepr


class Exploding:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Huge:
    def __repr__(self) -> str:
        return "H" * 10_000


@pytest.mark.parametrize(
    "obj",
    [
        (1, "two", 3.0, None, True),
        [1, [2, [3]]],
        {"a": 1, "b": [1, 2]},
        (1,),
        (),
        set(),
        frozenset(),
        frozenset({1}),
        deque([1, 2]),
        deque(),
        b"bytes",
        OrderedDict(a=1),
    ],
)
def test_small_values_render_exactly_like_repr(obj: Any) -> None:
    assert saferepr(obj) == repr(obj)


def test_long_output_is_cut_with_an_ellipsis() -> None:
    text = saferepr(list(range(100_000)), maxlen=40)
    assert len(text) == 40 and text.endswith("...") and text.startswith("[0, 1, 2")
    assert saferepr("x" * 5000, maxlen=10) == "'xxxxxx..."
    assert saferepr(Huge(), maxlen=5) == "HH..."
    assert saferepr("abcdef", maxlen=2) == "'a"


def test_a_raising_repr_becomes_a_placeholder() -> None:
    text = saferepr([1, Exploding()])
    assert text.startswith("[1, <unrepresentable Exploding object at 0x")
    assert text.endswith(": RuntimeError>]")


def test_cycles_and_deep_nesting_are_shown_with_dots() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert saferepr(loop) == "[1, [...]]"
    deep: Any = [[[[["bottom"]]]]]
    assert saferepr(deep) == "[[[[...]]]]"
    assert saferepr(deep, maxlevels=10) == repr(deep)


def test_int_too_large_to_render_does_not_raise() -> None:
    assert saferepr(10**5000).startswith("<unrepresentable int object")


def test_maxlen_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxlen must be an int >= 1"):
        saferepr("x", maxlen=0)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=40,
)


@given(json_like, st.integers(min_value=1, max_value=200))
def test_never_longer_than_maxlen_and_a_prefix_of_repr_when_shallow(obj: Any, maxlen: int) -> None:
    text = saferepr(obj, maxlen=maxlen, maxlevels=100)
    assert len(text) <= maxlen
    full = repr(obj)
    if len(full) <= maxlen:
        assert text == full
    elif maxlen > 3:
        assert full.startswith(text[:-3])
