"""``memory://``: a result store inside this process, for tests and single-process apps.

Every backend object with the same URL sees the same store, whatever thread or event loop
it runs on (the worker's loop writes, the portal loop behind sync ``result.get()`` reads),
so a test can run a worker and a client in one process. ``memory://`` and
``memory://name`` are separate stores.

Metas are kept encoded with the configured serializer, exactly as a real store keeps
them: a result that would not survive Redis or SQLite does not survive here either, and
readers never share a mutable dict.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .. import states
from ..exceptions import ConfigurationError, ConnectionClosedError
from ._waiting import Hub, Waiting, hub_for, may_overwrite, wait_until_ready
from .base import Backend, Meta, pending_meta
from .meta import EncodedMeta, decode_meta, serialize_meta

__all__ = ["MemoryBackend", "clear_stores"]

#: Writes between opportunistic sweeps of expired results.
_SWEEP_EVERY = 1000


@dataclass(slots=True)
class _Row:
    encoded: EncodedMeta
    #: ``time.monotonic()`` after which the row reads as PENDING (None: never).
    expires_at: float | None


class _Store:
    """One named store: rows under a lock, plus the hub that wakes waiting loops."""

    __slots__ = ("hub", "lock", "rows", "writes")

    def __init__(self, name: str) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, _Row] = {}
        self.hub: Hub = hub_for(f"memory://{name}")
        self.writes = 0

    def sweep(self, now: float) -> int:
        """Delete expired rows; the caller holds the lock."""
        dead = [k for k, row in self.rows.items() if _expired(row, now)]
        for key in dead:
            del self.rows[key]
        return len(dead)


_stores_lock = threading.Lock()
_stores: dict[str, _Store] = {}


def _store_for(name: str) -> _Store:
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = _Store(name)
        return store


def _reset_after_fork() -> None:
    # Locks held by other parent threads at fork time would never be released here.
    global _stores_lock
    _stores_lock = threading.Lock()
    for name, store in _stores.items():
        store.lock = threading.Lock()
        store.hub = hub_for(f"memory://{name}")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def clear_stores() -> None:
    """Empty every ``memory://`` result store of this process (for test isolation)."""
    with _stores_lock:
        stores = list(_stores.values())
    for store in stores:
        with store.lock:
            store.rows.clear()


def _store_name(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "memory":
        raise ConfigurationError(
            f"not a memory result backend URL: {url!r} (expected memory:// or memory://name)",
            key="result_backend",
        )
    return (parts.netloc + parts.path).strip("/")


class MemoryBackend(Backend):
    """The process-wide in-memory result store (see the module docstring)."""

    schemes = ("memory",)

    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._store = _store_for(_store_name(url))
        self._waiting: Waiting | None = None
        self._closed = False

    async def connect(self) -> None:
        self._closed = False
        self._ensure_waiting()

    async def close(self) -> None:
        self._closed = True
        if self._waiting is not None:
            self._store.hub.leave(self._waiting)
            self._waiting.close(ConnectionClosedError(f"{self!r} was closed while waiting"))
            self._waiting = None

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosedError(f"{self!r} is closed")

    def _ensure_waiting(self) -> Waiting:
        if self._waiting is None:
            self._waiting = Waiting(asyncio.get_running_loop())
        return self._waiting

    def _expires_at(self, now: float) -> float | None:
        return now + self.expires if self.expires else None

    async def store_many(self, items: Sequence[tuple[str, Meta]]) -> None:
        self._check_open()
        encoded = [(tid, serialize_meta(tid, meta, self.serializer)) for tid, meta in items]
        ready: list[str] = []
        store = self._store
        with store.lock:
            now = time.monotonic()
            expires_at = self._expires_at(now)
            for task_id, enc in encoded:
                row = store.rows.get(task_id)
                old = None if row is None or _expired(row, now) else row.encoded.status
                if may_overwrite(old, enc.status):
                    store.rows[task_id] = _Row(enc, expires_at)
                    if enc.status in states.READY_STATES:
                        ready.append(task_id)
            store.writes += len(encoded)
            if store.writes >= _SWEEP_EVERY:
                store.writes = 0
                store.sweep(now)
        store.hub.notify(ready)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        self._check_open()
        store = self._store
        found: dict[str, EncodedMeta] = {}
        with store.lock:
            now = time.monotonic()
            for task_id in task_ids:
                row = store.rows.get(task_id)
                if row is not None and not _expired(row, now):
                    found[task_id] = row.encoded
        out: dict[str, Meta] = {}
        for task_id in task_ids:
            enc = found.get(task_id)
            out[task_id] = (
                pending_meta(task_id)
                if enc is None
                else decode_meta(enc.body, enc.content_type, self.accept, enc.content_encoding)
            )
        return out

    async def wait_for(self, task_id: str, timeout: float | None) -> Meta:
        self._check_open()
        waiting = self._ensure_waiting()
        self._store.hub.join(waiting)
        try:
            return await wait_until_ready(task_id, timeout, waiting, self.get_meta)
        finally:
            if not waiting:
                self._store.hub.leave(waiting)

    async def forget(self, task_ids: Sequence[str]) -> None:
        self._check_open()
        store = self._store
        with store.lock:
            for task_id in task_ids:
                store.rows.pop(task_id, None)

    async def cleanup(self) -> int:
        self._check_open()
        with self._store.lock:
            return self._store.sweep(time.monotonic())


def _expired(row: _Row, now: float) -> bool:
    return row.expires_at is not None and row.expires_at <= now
