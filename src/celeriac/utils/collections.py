"""Bounded containers: every in-memory structure in a worker or monitor has a limit.

:class:`LimitedSet` holds revoked task ids (50,000 for 3 hours by default) and is
exchanged between workers by Mingle and persisted by the state DB; :class:`LRUCache`
bounds the task and worker maps of the event ``State``.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

__all__ = ["LimitedSet", "LRUCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

_MISSING: Any = object()

#: Rebuild the heap once stale entries (from discards and re-adds) outnumber live ones
#: by this factor, so memory stays proportional to the live size.
_HEAP_SLACK = 2


class LimitedSet:
    """A set that forgets: at most ``maxlen`` items, each for at most ``expires`` seconds.

    Items are stamped with :func:`time.monotonic` when added (or with ``now``). When full,
    adding evicts the oldest item; expired items are dropped as new ones arrive and by
    :meth:`purge`. Membership does not consult the clock: an expired item counts until
    it is purged, which errs on the side of still honouring a revocation.

    Every operation is O(log n): a dict gives membership, a heap of
    ``(stamp, sequence, item)`` gives the oldest; discarded items leave stale heap
    entries that are skipped and periodically compacted.

    Args:
        maxlen: Most items held; must be at least 1 (unbounded sets are not offered).
        expires: Seconds an item lives; ``None`` or ``0`` for no expiry.

    Raises:
        ValueError: ``maxlen`` below 1 or ``expires`` negative.
    """

    def __init__(self, maxlen: int, expires: float | None = None) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"LimitedSet maxlen must be an int >= 1, got {maxlen!r}")
        if expires is not None and (isinstance(expires, bool) or expires < 0):
            raise ValueError(f"LimitedSet expires must be >= 0 seconds or None, got {expires!r}")
        self.maxlen = maxlen
        self.expires: float = float(expires or 0)
        self._data: dict[Hashable, tuple[float, int, Hashable]] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0

    # --- mutation ---------------------------------------------------------------------

    def add(self, item: Hashable, now: float | None = None) -> None:
        """Add ``item`` (or refresh its stamp), then enforce the size and age limits.

        Args:
            item: Any hashable, typically a task id.
            now: The stamp, on the :func:`time.monotonic` scale; the current time by default.
        """
        stamp = time.monotonic() if now is None else float(now)
        self._insert(item, stamp)
        self._enforce(stamp)

    def _insert(self, item: Hashable, stamp: float) -> None:
        self._seq += 1
        entry = (stamp, self._seq, item)
        replaced = item in self._data
        self._data[item] = entry
        heapq.heappush(self._heap, entry)
        if replaced:
            self._maybe_compact()

    def discard(self, item: Hashable) -> None:
        """Remove ``item`` if present."""
        if self._data.pop(item, None) is not None:
            self._maybe_compact()

    def clear(self) -> None:
        """Remove everything."""
        self._data.clear()
        self._heap.clear()

    def pop(self, default: Any = None) -> Any:
        """Remove and return the oldest item, or ``default`` when empty."""
        heap, data = self._heap, self._data
        while heap:
            entry = heapq.heappop(heap)
            if data.get(entry[2]) is entry:
                del data[entry[2]]
                return entry[2]
        return default

    def purge(self, now: float | Callable[[], float] | None = None) -> None:
        """Drop expired items (and any over ``maxlen``).

        Args:
            now: The current time on the monotonic scale (or a callable giving it);
                :func:`time.monotonic` by default. Tests pass a later time to expire.
        """
        if now is None:
            current = time.monotonic()
        elif callable(now):
            current = float(now())
        else:
            current = float(now)
        self._enforce(current)

    def _enforce(self, now: float) -> None:
        data = self._data
        while len(data) > self.maxlen:
            self.pop()
        if not self.expires:
            return
        heap, deadline = self._heap, now - self.expires
        while heap:
            entry = heap[0]
            if data.get(entry[2]) is not entry:
                heapq.heappop(heap)  # stale: discarded or re-added since
            elif entry[0] <= deadline:
                heapq.heappop(heap)
                del data[entry[2]]
            else:
                break

    def _maybe_compact(self) -> None:
        if len(self._heap) > _HEAP_SLACK * len(self._data) + 16:
            self._heap = list(self._data.values())
            heapq.heapify(self._heap)

    def update(self, other: LimitedSet | Mapping[Any, Any] | Iterable[Hashable]) -> None:
        """Merge items from another set, a stamp dict, or an iterable.

        * A :class:`LimitedSet`: items keep their stamps (same process, same clock).
        * A dict ``{item: stamp}`` or Celery's mingle shape ``{item: [stamp, ...]}``:
          stamps come from another process, maybe another host whose monotonic clock
          is not comparable with ours. A stamp ahead of our clock is clamped to now:
          otherwise it would never expire here and, once such items fill the set, every
          new revocation would be the oldest item and be evicted at once.
        * Any other iterable: items are stamped now.

        Raises:
            ValueError: A dict value is not a number or a list starting with one.
            TypeError: ``other`` is none of the above.
        """
        if isinstance(other, LimitedSet):
            entries = sorted(other._data.values(), key=lambda e: e[:2])
            for stamp, _, item in entries:
                self._insert(item, stamp)
            self._enforce(time.monotonic())
        elif isinstance(other, Mapping):
            current = time.monotonic()
            parsed = [(self._stamp_of(key, value), key) for key, value in other.items()]
            parsed.sort(key=lambda pair: pair[0])
            for stamp, key in parsed:
                self._insert(key, min(stamp, current))
            self._enforce(current)
        elif isinstance(other, Iterable) and not isinstance(other, str | bytes):
            current = time.monotonic()
            for item in other:
                self._insert(item, current)
            self._enforce(current)
        else:
            raise TypeError(
                f"LimitedSet.update expects a LimitedSet, a dict or an iterable of items, "
                f"got {type(other).__name__}"
            )

    @staticmethod
    def _stamp_of(key: Any, value: Any) -> float:
        stamp = value[0] if isinstance(value, list | tuple) and value else value
        if isinstance(stamp, bool) or not isinstance(stamp, int | float):
            raise ValueError(
                f"LimitedSet entry {key!r}: expected a timestamp (float) or "
                f"[timestamp, ...], got {value!r}"
            )
        return float(stamp)

    # --- views ------------------------------------------------------------------------

    def as_dict(self, pairs: bool = False) -> dict[Any, Any]:
        """The set as a serialisable dict, for Mingle and the state DB.

        Args:
            pairs: ``False`` gives ``{item: stamp}``; ``True`` gives Celery's ``hello``
                reply shape ``{item: [stamp, item]}``. :meth:`update` reads both.
        """
        if pairs:
            return {item: [stamp, item] for stamp, _, item in self._data.values()}
        return {item: stamp for stamp, _, item in self._data.values()}

    def __contains__(self, item: object) -> bool:
        return item in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __iter__(self) -> Iterator[Any]:
        """Items from oldest to newest."""
        return (entry[2] for entry in sorted(self._data.values(), key=lambda e: e[:2]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LimitedSet):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__}: {len(self)} items, maxlen={self.maxlen}, "
            f"expires={self.expires:g}s>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_limited_set, (self.maxlen, self.expires or None, self.as_dict()))


def _rebuild_limited_set(maxlen: int, expires: float | None, data: dict[Any, float]) -> LimitedSet:
    new = LimitedSet(maxlen, expires)
    for item, stamp in sorted(data.items(), key=lambda pair: pair[1]):
        new._insert(item, stamp)
    return new


class LRUCache(Generic[K, V]):
    """A dict bounded to ``limit`` keys that evicts the least recently used one.

    Reading a key (``cache[k]``, :meth:`get`) or writing it makes it the most recent.
    Iteration and :meth:`items`/:meth:`values` return snapshots and do not reorder, so a
    monitor can render the whole map while events keep arriving. Thread-safe: the web
    dashboard reads while the receiver writes.

    Args:
        limit: Most keys held; at least 1.

    Raises:
        ValueError: ``limit`` below 1.
    """

    def __init__(self, limit: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.RLock()
        self._limit = self._check_limit(limit)

    @staticmethod
    def _check_limit(limit: int) -> int:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"LRUCache limit must be an int >= 1, got {limit!r}")
        return limit

    @property
    def limit(self) -> int:
        """Most keys held; lowering it evicts the oldest keys at once."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        with self._lock:
            self._limit = self._check_limit(value)
            self._evict()

    def _evict(self) -> None:
        data = self._data
        while len(data) > self._limit:
            data.popitem(last=False)

    def __getitem__(self, key: K) -> V:
        with self._lock:
            value = self._data[key]
            self._data.move_to_end(key)
            return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self._evict()

    def __delitem__(self, key: K) -> None:
        with self._lock:
            del self._data[key]

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: Any = None) -> Any:
        """The value for ``key`` (marking it recently used), or ``default``."""
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default``; KeyError without one)."""
        with self._lock:
            if default is _MISSING:
                return self._data.pop(key)
            return self._data.pop(key, default)

    def setdefault(self, key: K, default: V) -> V:
        """``cache[key]`` if present (marking it used), else store and return ``default``."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            self[key] = default
            return default

    def update(self, other: Mapping[K, V] | Iterable[tuple[K, V]] = (), **kwargs: V) -> None:
        """Set several keys, in order (the last ones end up most recent)."""
        with self._lock:
            pairs = other.items() if isinstance(other, Mapping) else other
            for key, value in pairs:
                self[key] = value
            for key, value in kwargs.items():
                self[key] = value  # type: ignore[index]

    def clear(self) -> None:
        """Remove everything."""
        with self._lock:
            self._data.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def keys(self) -> list[K]:
        """Snapshot of the keys, least recently used first."""
        with self._lock:
            return list(self._data)

    def values(self) -> list[V]:
        """Snapshot of the values, least recently used first."""
        with self._lock:
            return list(self._data.values())

    def items(self) -> list[tuple[K, V]]:
        """Snapshot of ``(key, value)`` pairs, least recently used first."""
        with self._lock:
            return list(self._data.items())

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self)}/{self._limit} keys>"
