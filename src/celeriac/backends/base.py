"""The contract every result store fulfils, and the meta format they share.

A result is Celery's *task meta*: a dict with ``status``, ``result``, ``traceback``,
``children``, ``date_done``, ``task_id`` (plus ``group_id``/``parent_id`` and, with
``result_extended``, ``name``/``args``/``kwargs``/``worker``/``retries``/``queue``), so
stores written by celeriac and Celery read the same (spec/celery-wire.md section 3).

Stores are async and batched: the worker writes every result produced in one loop
iteration with one :meth:`Backend.store_many` call. The sync client API reaches them
through the process's portal loop (:mod:`celeriac.utils.portal`).

A write never replaces a ready state (SUCCESS/FAILURE/REVOKED) with a non-ready one: a
late STARTED from a slow path must not hide a result that is already there. SUCCESS is
final (Celery's dedup guard): a redelivered duplicate cannot change a value a caller may
already have read, while a later ready state may replace FAILURE or REVOKED. Expired
results count as absent.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .. import states

__all__ = ["Backend", "Meta", "pending_meta"]

#: The task meta dict (see module docstring).
Meta = dict[str, Any]


def pending_meta(task_id: str) -> Meta:
    """What an unknown or expired task id reads as."""
    return {
        "status": states.PENDING,
        "result": None,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }


class Backend(abc.ABC):
    """One result store connection, used from one event loop."""

    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when the store deletes expired results by itself (Redis TTLs), so
    #: :meth:`cleanup` finds nothing to do.
    expires_natively: ClassVar[bool] = False

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = 86400.0,
        serializer: str = "json",
        accept: Sequence[str] = ("json",),
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        #: Seconds a stored result is kept (None or 0: forever).
        self.expires = expires or None
        self.serializer = serializer
        self.accept = tuple(accept)
        self.options = dict(options or {})

    def __repr__(self) -> str:
        from ..messaging.transports.base import mask_url

        return f"<{type(self).__name__} {mask_url(self.url)}>"

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def store_many(self, items: Sequence[tuple[str, Meta]]) -> None:
        """Store metas (``(task_id, meta)`` pairs, in order) in one round trip.

        Honours the ready-state guard of the module docstring and wakes waiters.
        """

    @abc.abstractmethod
    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        """Current metas; unknown or expired ids map to :func:`pending_meta`."""

    def wait_sync(self, task_id: str, timeout: float | None) -> Meta | None:
        """:meth:`wait_for` for a sync caller on its own thread, without the event loop,
        where the backend can: the meta (ready, or the last one read when ``timeout`` ran
        out), or None to wait through the loop instead. Safe to call from any thread."""
        del task_id, timeout
        return None

    @abc.abstractmethod
    async def wait_for(self, task_id: str, timeout: float | None) -> Meta:
        """Return the meta once it is in a ready state.

        Raises :class:`~celeriac.exceptions.ResultTimeoutError` after ``timeout`` seconds.
        """

    @abc.abstractmethod
    async def forget(self, task_ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    async def cleanup(self) -> int:
        """Delete expired results; return how many."""

    # -- conveniences built on the primitives ------------------------------------------

    async def store(self, task_id: str, meta: Meta) -> None:
        await self.store_many([(task_id, meta)])

    async def get_meta(self, task_id: str) -> Meta:
        return (await self.get_many([task_id]))[task_id]
