"""LimitedSet (revoked ids) and LRUCache (event State maps)."""

from __future__ import annotations

import pickle
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.utils.collections import LimitedSet, LRUCache

# --- LimitedSet ----------------------------------------------------------------------------


def test_limited_set_evicts_the_oldest_when_full() -> None:
    s = LimitedSet(maxlen=3)
    for i, item in enumerate("abcd"):
        s.add(item, now=float(i))
    assert len(s) == 3
    assert "a" not in s and list(s) == ["b", "c", "d"]


def test_re_adding_refreshes_the_stamp() -> None:
    s = LimitedSet(maxlen=2)
    s.add("a", now=1)
    s.add("b", now=2)
    s.add("a", now=3)  # a is now the newest
    s.add("c", now=4)
    assert list(s) == ["a", "c"]


def test_items_expire_on_purge_and_as_new_items_arrive() -> None:
    s = LimitedSet(maxlen=100, expires=10)
    s.add("old", now=0)
    s.add("mid", now=5)
    assert "old" in s  # membership does not consult the clock
    s.purge(now=10.5)
    assert list(s) == ["mid"]
    s.add("new", now=16)  # adding purges what expired by then
    assert list(s) == ["new"]
    s.purge(now=lambda: 1000.0)
    assert len(s) == 0 and not s


def test_discard_and_pop() -> None:
    s = LimitedSet(maxlen=10)
    s.add("a", now=1)
    s.add("b", now=2)
    s.discard("a")
    s.discard("missing")
    assert "a" not in s and len(s) == 1
    assert s.pop() == "b"
    assert s.pop("empty") == "empty"


def test_many_discards_do_not_grow_memory_without_bound() -> None:
    s = LimitedSet(maxlen=10)
    for i in range(10_000):
        s.add(i % 5, now=float(i))
        s.discard(i % 5)
    assert len(s) == 0
    assert len(s._heap) < 64  # stale heap entries are compacted


def test_as_dict_round_trips_and_has_celerys_mingle_shape() -> None:
    now = time.monotonic()
    s = LimitedSet(maxlen=10, expires=3600)
    s.add("t1", now=now - 2)
    s.add("t2", now=now - 1)
    assert s.as_dict() == {"t1": now - 2, "t2": now - 1}
    assert s.as_dict(pairs=True) == {"t1": [now - 2, "t1"], "t2": [now - 1, "t2"]}
    copy = LimitedSet(maxlen=10, expires=3600)
    copy.update(s.as_dict())
    assert copy == s
    other = LimitedSet(maxlen=10, expires=3600)
    other.update(s.as_dict(pairs=True))  # what a Celery hello reply carries
    assert other == s


def test_update_from_another_set_and_from_an_iterable() -> None:
    a = LimitedSet(maxlen=3)
    a.add("x", now=time.monotonic())
    b = LimitedSet(maxlen=3)
    b.update(a)
    b.update(["y", "z", "w"])
    assert len(b) == 3 and "w" in b


def test_update_clamps_stamps_from_a_clock_ahead_of_ours() -> None:
    # Given stamps from a host whose monotonic clock is far ahead
    s = LimitedSet(maxlen=2, expires=60)
    s.update({"remote1": time.monotonic() + 1e6, "remote2": time.monotonic() + 1e6})
    # When a revocation arrives locally, it must not be the "oldest" and evicted at once
    s.add("local")
    assert "local" in s
    # And the remote stamps expire on our clock
    s.purge(now=time.monotonic() + 120)
    assert len(s) == 0


@pytest.mark.parametrize("bad", [{"t": "yesterday"}, {"t": [None]}, {"t": True}, {"t": []}])
def test_update_rejects_malformed_stamps_naming_the_item(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="LimitedSet entry 't'"):
        LimitedSet(maxlen=5).update(bad)


def test_update_rejects_non_collections() -> None:
    with pytest.raises(TypeError, match="got int"):
        LimitedSet(maxlen=5).update(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got str"):
        LimitedSet(maxlen=5).update("abc")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"maxlen": 0}, "maxlen must be an int >= 1"),
        ({"maxlen": 1.5}, "maxlen must be an int >= 1"),
        ({"maxlen": 10, "expires": -1}, "expires must be >= 0"),
    ],
)
def test_limited_set_rejects_unbounded_or_nonsense_limits(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LimitedSet(**kwargs)  # type: ignore[arg-type]


def test_limited_set_pickles_and_has_a_readable_repr() -> None:
    s = LimitedSet(maxlen=5, expires=30)
    s.add("a", now=1)
    s.add("b", now=2)
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s and clone.maxlen == 5 and clone.expires == 30
    assert list(clone) == ["a", "b"]
    assert repr(s) == "<LimitedSet: 2 items, maxlen=5, expires=30s>"


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "discard", "purge"]),
        st.integers(min_value=0, max_value=30),
        st.floats(min_value=0, max_value=100, allow_nan=False),
    ),
    max_size=200,
)


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=1, max_value=12), operations)
def test_limited_set_never_exceeds_maxlen_and_agrees_with_a_model(
    maxlen: int, ops: list[tuple[str, int, float]]
) -> None:
    s = LimitedSet(maxlen=maxlen, expires=20)
    clock = 0.0
    model: dict[int, float] = {}
    for op, item, step in ops:
        clock += step / 10  # time only moves forward
        if op == "add":
            s.add(item, now=clock)
            model.pop(item, None)  # re-adding makes it the newest, also among equal stamps
            model[item] = clock
            model = {k: t for k, t in model.items() if t > clock - 20}
            while len(model) > maxlen:
                del model[min(model, key=lambda k: model[k])]
        elif op == "discard":
            s.discard(item)
            model.pop(item, None)
        else:
            s.purge(now=clock)
            model = {k: t for k, t in model.items() if t > clock - 20}
        assert len(s) <= maxlen
        assert s.as_dict() == model


# --- LRUCache ------------------------------------------------------------------------------


def test_lru_cache_evicts_the_least_recently_used() -> None:
    cache: LRUCache[str, int] = LRUCache(limit=2)
    cache["a"] = 1
    cache["b"] = 2
    assert cache["a"] == 1  # a becomes most recent
    cache["c"] = 3
    assert "b" not in cache
    assert cache.keys() == ["a", "c"]
    assert cache.get("a") == 1 and cache.get("zzz") is None and cache.get("zzz", 0) == 0
    cache["d"] = 4
    assert cache.items() == [("a", 1), ("d", 4)]


def test_lru_cache_iteration_and_views_do_not_reorder() -> None:
    cache: LRUCache[str, int] = LRUCache(limit=3)
    cache.update({"a": 1, "b": 2, "c": 3})
    assert list(cache) == ["a", "b", "c"]
    assert cache.values() == [1, 2, 3]
    cache["d"] = 4
    assert list(cache) == ["b", "c", "d"]


def test_lru_cache_pop_setdefault_clear_and_limit_changes() -> None:
    cache: LRUCache[str, int] = LRUCache(limit=3)
    cache.update(a=1, b=2, c=3)
    assert cache.pop("a") == 1 and cache.pop("a", None) is None
    with pytest.raises(KeyError):
        cache.pop("a")
    assert cache.setdefault("b", 9) == 2 and cache.setdefault("e", 5) == 5
    del cache["e"]
    cache.limit = 1
    assert cache.keys() == ["b"] and len(cache) == 1
    cache.clear()
    assert len(cache) == 0
    assert repr(cache) == "<LRUCache: 0/1 keys>"
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        LRUCache(0)


def test_lru_cache_stays_bounded_under_concurrent_writers() -> None:
    cache: LRUCache[int, int] = LRUCache(limit=50)

    def write(offset: int) -> None:
        for i in range(2000):
            cache[offset + i] = i
            cache.get(offset + i // 2)

    threads = [threading.Thread(target=write, args=(n * 10_000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50
