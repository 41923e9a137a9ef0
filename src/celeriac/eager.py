"""Running a task in the calling process: ``task.apply()`` and ``task_always_eager``.

The same tracer the worker's pools use runs the function, so an eager call sees the same
request context, retries and failure handling as a real one; it just skips the broker.
Retries run again at once (the countdown is not slept), as in Celery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import states
from .exceptions import Retry
from .utils.ids import uuid4_str

if TYPE_CHECKING:
    from .task import Task
    from .worker.pools.base import Job, Outcome

__all__ = ["EagerResult", "apply_eagerly", "aapply_eagerly"]


class EagerResult:
    """The already-known result of an eager execution, with AsyncResult's reading API."""

    def __init__(
        self,
        task_id: str,
        retval: Any,
        state: str,
        traceback: str | None = None,
        name: str | None = None,
    ) -> None:
        self.id = self.task_id = task_id
        self._value = retval
        self._state = state
        self.traceback = traceback
        self.name = name

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    def __await__(self):  # type: ignore[no-untyped-def]
        async def value() -> Any:
            return self.get()

        return value().__await__()

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def result(self) -> Any:
        return self._value

    info = result

    def ready(self) -> bool:
        return True

    def successful(self) -> bool:
        return self._state == states.SUCCESS

    def failed(self) -> bool:
        return self._state == states.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True, **kwargs: Any) -> Any:
        if (
            propagate
            and self._state in states.PROPAGATE_STATES
            and isinstance(self._value, BaseException)
        ):
            raise self._value
        return self._value

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> Any:
        return self.get(timeout, propagate)

    def forget(self) -> None:
        pass


def _job(
    task: Task[Any, Any],
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> Job:
    from .worker.pools.base import Job

    task_id = options.get("task_id") or uuid4_str()
    context = {
        "retries": int(options.get("retries") or 0),
        "is_eager": True,
        "called_directly": False,
        "root_id": options.get("root_id") or task_id,
        "parent_id": options.get("parent_id"),
        "delivery_info": {"is_eager": True},
        "headers": options.get("headers"),
    }
    return Job(task_id, task.name, list(args or ()), dict(kwargs or {}), context)


def _next_attempt(job: Job, outcome: Outcome) -> Job | None:
    """The retry's job, or None when the outcome is final."""
    if outcome.state != states.RETRY or not isinstance(outcome.exc, Retry):
        return None
    sig = outcome.exc.sig or {}
    job.context = {**job.context, "retries": job.context["retries"] + 1}
    job.args = list(sig.get("args", job.args))
    job.kwargs = dict(sig.get("kwargs", job.kwargs))
    return job


def _result(task: Task[Any, Any], job: Job, outcome: Outcome) -> EagerResult:
    if outcome.state == states.SUCCESS:
        return EagerResult(job.id, outcome.retval, states.SUCCESS, name=task.name)
    if task.app.conf.task_eager_propagates and outcome.exc is not None:
        raise outcome.exc
    return EagerResult(job.id, outcome.exc, outcome.state, outcome.traceback, name=task.name)


def apply_eagerly(
    task: Task[Any, Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> EagerResult:
    from .worker.tracer import trace

    job: Job | None = _job(task, args, kwargs, options)
    while True:
        assert job is not None
        outcome = trace(task.app, job)
        nxt = _next_attempt(job, outcome)
        if nxt is None:
            return _result(task, job, outcome)
        job = nxt


async def aapply_eagerly(
    task: Task[Any, Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> EagerResult:
    from .worker.tracer import trace, trace_async

    job: Job | None = _job(task, args, kwargs, options)
    while True:
        assert job is not None
        outcome = await trace_async(task.app, job) if task.is_coroutine else trace(task.app, job)
        nxt = _next_attempt(job, outcome)
        if nxt is None:
            return _result(task, job, outcome)
        job = nxt
