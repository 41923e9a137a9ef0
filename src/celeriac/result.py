"""``AsyncResult``: the handle a caller keeps to read a task's state and result.

It is both sync and async. Sync reads (``state``, ``result``, ``get()``) run on the
process's portal loop through :func:`celeriac.utils.portal.run`, so they work in plain
scripts and web views; async code awaits ``result.get_async()`` (or just ``await
result``), which uses the running loop's backend.

A result is read fresh from the backend on every access until it is ready; after that the
ready meta is cached, because a ready state never changes (the backend's guard ensures it).

Failures are rebuilt through :func:`celeriac.backends.meta.exception_from_meta`: only
exception classes from trusted modules and the app's own task modules come back as
themselves, anything else as :class:`~celeriac.exceptions.RemoteTaskError`.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import states
from .backends.meta import exception_from_meta
from .exceptions import RemoteTaskError, ResultTimeoutError
from .utils import portal

if TYPE_CHECKING:
    from .app import Celeriac
    from .backends.base import Meta

__all__ = ["AsyncResult", "result_from_tuple"]

#: Extra seconds the sync face waits on the portal beyond ``timeout`` before giving up on
#: a backend that does not honour its own deadline.
_PORTAL_GRACE = 5.0

_SYNC_SUBTASK_ERROR = (
    "Never call result.get() within a task: waiting for another task while holding a "
    "worker slot can deadlock the pool. Chain the tasks instead (task1.s() | task2.s()), "
    "or pass disable_sync_subtasks=False if you accept the risk."
)


class AsyncResult:
    """The pending or finished result of one task, by id.

    Args:
        id: The task id.
        app: The app whose backend holds the result (default: the current app).
        task_name: The task's name, when the caller knows it (``name`` falls back to it).
        parent: The result of the task that sent this one, for :meth:`as_tuple`.
    """

    def __init__(
        self,
        id: str,
        app: Celeriac | None = None,
        *,
        task_name: str | None = None,
        parent: AsyncResult | None = None,
    ) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"AsyncResult needs a non-empty task id string, got {id!r}")
        self.id = id
        self._app = app
        self._task_name = task_name
        self.parent = parent
        #: The meta once it is ready (then never read again).
        self._ready_meta: Meta | None = None
        self._exception: BaseException | None = None

    # -- identity ---------------------------------------------------------------------------

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            from .app import current_app

            self._app = current_app()
        return self._app

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __str__(self) -> str:
        return self.id

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.id,), {"_task_name": self._task_name, "parent": self.parent})

    def as_tuple(self) -> tuple[tuple[str, Any], None]:
        """Celery's result tuple ``((id, parent_tuple), None)``, as metas list children."""
        return (self.id, self.parent.as_tuple() if self.parent is not None else None), None

    # -- reading ----------------------------------------------------------------------------

    def _meta(self) -> Meta:
        if self._ready_meta is not None:
            return self._ready_meta
        if portal.in_portal_thread():
            raise RuntimeError(
                "AsyncResult was read synchronously on celeriac's portal loop thread, which "
                "would block the loop doing the read: use `await result.state_async()` or "
                "`await result.get_async()` there"
            )
        return portal.run(self._ameta())

    async def _ameta(self) -> Meta:
        if self._ready_meta is not None:
            return self._ready_meta
        backend = await self.app.get_backend()
        return self._remember(await backend.get_meta(self.id))

    def _remember(self, meta: Meta) -> Meta:
        if meta.get("status") in states.READY_STATES:
            self._ready_meta = meta
        return meta

    @property
    def state(self) -> str:
        """The current state name (PENDING for unknown or expired ids)."""
        return str(self._meta()["status"])

    status = state

    async def state_async(self) -> str:
        """:attr:`state` for async code."""
        return str((await self._ameta())["status"])

    @property
    def result(self) -> Any:
        """The return value, or the exception of a failure, or a custom state's meta."""
        return self._value(self._meta())

    info = result

    @property
    def traceback(self) -> str | None:
        tb = self._meta().get("traceback")
        return tb if tb is None else str(tb)

    @property
    def date_done(self) -> datetime | None:
        """When the task finished (aware datetime), or None while it is not ready.

        Raises:
            ValueError: The stored ``date_done`` is not ISO-8601.
        """
        value = self._meta().get("date_done")
        if value is None or isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value))
        except ValueError:
            raise ValueError(f"task {self.id} has a malformed date_done: {value!r}") from None

    @property
    def name(self) -> str | None:
        """The task name (stored with ``result_extended``, else as given to the handle)."""
        return self._meta().get("name") or self._task_name

    @property
    def args(self) -> Any:
        return self._meta().get("args")

    @property
    def kwargs(self) -> Any:
        return self._meta().get("kwargs")

    @property
    def worker(self) -> str | None:
        return self._meta().get("worker")

    @property
    def retries(self) -> int | None:
        return self._meta().get("retries")

    @property
    def queue(self) -> str | None:
        return self._meta().get("queue")

    def ready(self) -> bool:
        """True once the task succeeded, failed or was revoked."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # -- waiting ----------------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> Any:
        """Wait until the task is ready and return its value.

        Args:
            timeout: Seconds to wait (None: forever).
            propagate: Re-raise the task's exception for FAILURE/REVOKED; otherwise
                return the exception instance.
            interval: Accepted for Celery compatibility; backends are woken by writes
                (or poll on their own schedule), so it has no effect.
            disable_sync_subtasks: Refuse to block inside a running task (see the error).

        Raises:
            ResultTimeoutError: Not ready within ``timeout``; the task may still finish.
            RuntimeError: Called on the portal loop's thread, or inside a task.
        """
        del interval
        if portal.in_portal_thread():
            raise RuntimeError(
                "AsyncResult.get() was called on celeriac's portal loop thread, where it "
                "would block the very loop that waits for the result: use "
                "`await result` (or `await result.get_async()`) in async code"
            )
        if disable_sync_subtasks:
            _refuse_inside_task()
        if self._ready_meta is not None:
            return self._outcome(self._ready_meta, propagate)
        backend = self.app.connected_backend()
        if backend is not None:
            # The caller's thread waits anyway: where the backend can, it waits here
            # without the event loop (see Backend.wait_sync).
            meta = backend.wait_sync(self.id, timeout)
            if meta is not None:
                if meta.get("status") not in states.READY_STATES:
                    raise ResultTimeoutError(
                        f"task {self.id} was not ready within {timeout}s "
                        f"(last state {meta.get('status')}); it may still complete"
                    )
                return self._outcome(self._remember(meta), propagate)
        grace = None if timeout is None else max(timeout, 0.0) + _PORTAL_GRACE
        try:
            meta = portal.run(self._wait(timeout), grace)
        except ResultTimeoutError:
            raise
        except TimeoutError:
            raise ResultTimeoutError(
                f"task {self.id} was not ready within {timeout}s (the result backend did not "
                "answer in time)"
            ) from None
        return self._outcome(meta, propagate)

    wait = get

    async def get_async(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """:meth:`get` for async code, on the running loop's backend."""
        return self._outcome(await self._wait(timeout), propagate)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.get_async().__await__()

    async def _wait(self, timeout: float | None) -> Meta:
        if self._ready_meta is not None:
            return self._ready_meta
        backend = await self.app.get_backend()
        return self._remember(await backend.wait_for(self.id, timeout))

    def _outcome(self, meta: Meta, propagate: bool) -> Any:
        status = meta.get("status")
        if status in states.PROPAGATE_STATES:
            exc = self._rebuild_exception(meta)
            if propagate:
                raise exc
            return exc
        return meta.get("result")

    def _value(self, meta: Meta) -> Any:
        if meta.get("status") in states.EXCEPTION_STATES and meta.get("result") is not None:
            return self._rebuild_exception(meta)
        return meta.get("result")

    def _rebuild_exception(self, meta: Meta) -> BaseException:
        ready = meta is self._ready_meta
        if ready and self._exception is not None:
            return self._exception
        data = meta.get("result")
        if data is None:
            reason = f"task {self.id} ended in {meta.get('status')} without a stored exception"
            exc: BaseException = RemoteTaskError("UnknownError", None, [reason])
        else:
            exc = exception_from_meta(data, self._allowed_modules())
        tb = meta.get("traceback")
        if tb:
            exc.add_note(f"Remote traceback of task {self.id}:\n{tb}".rstrip())
        if ready:
            self._exception = exc
        return exc

    def _allowed_modules(self) -> set[str]:
        try:
            return set(self.app.task_modules())
        except AttributeError:
            return set()

    # -- forgetting -------------------------------------------------------------------------

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Tell the workers not to run this task; ``terminate=True`` stops it if running.

        Args:
            connection: Accepted for Celery compatibility; unused.
            terminate: Also stop a running execution (kill its child process on prefork).
            signal: The signal sent to the child process that runs it.
            wait: Wait for the workers' replies (``timeout`` seconds).
        """
        self.app.control.revoke(
            self.id,
            terminate=terminate,
            signal=signal,
            reply=wait,
            timeout=timeout if timeout is not None else 1.0,
        )

    async def revoke_async(
        self, terminate: bool = False, signal: str | int = "SIGTERM"
    ) -> None:
        await self.app.control.arevoke(self.id, terminate=terminate, signal=signal)

    def forget(self) -> None:
        """Delete the stored result (it reads as PENDING afterwards)."""
        portal.run(self.forget_async())

    async def forget_async(self) -> None:
        backend = await self.app.get_backend()
        await backend.forget([self.id])
        self._ready_meta = None
        self._exception = None


def result_from_tuple(value: Any, app: Celeriac | None = None) -> AsyncResult:
    """The AsyncResult a Celery result tuple (``((id, parent), None)``) describes.

    Raises:
        ValueError: Not a result tuple, or a group's tuple (which needs a group result).
    """
    if isinstance(value, AsyncResult):
        return value
    try:
        head, nodes = value
    except (TypeError, ValueError):
        raise ValueError(f"not a result tuple: {value!r}") from None
    if nodes is not None:
        raise ValueError(f"group result tuples are not supported here: {value!r}")
    if isinstance(head, list | tuple):
        task_id, parent = head
    else:
        task_id, parent = head, None
    return AsyncResult(
        task_id, app, parent=result_from_tuple(parent, app) if parent is not None else None
    )


def _refuse_inside_task() -> None:
    from .task import current_request

    request = current_request()
    if request is not None and getattr(request, "id", None) and not request.is_eager:
        raise RuntimeError(_SYNC_SUBTASK_ERROR)
