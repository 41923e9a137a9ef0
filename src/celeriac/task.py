"""Tasks: the user's function, its options, and the request context it runs in.

``@app.task`` wraps a function in a :class:`Task`. Calling the task calls the function
in-process; ``delay``/``apply_async`` send it to a worker; ``adelay``/``aapply_async`` do
the same from async code (the ``a`` prefix is Django's convention for async twins).

The request context (``self.request`` in a bound task) lives in a :class:`ContextVar`, so
it is right per thread (threads pool) and per asyncio task (many ``async def`` tasks at
once on one loop), not only per process.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .exceptions import ConfigurationError, MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    from .app import Celeriac
    from .canvas import Signature
    from .result import AsyncResult

__all__ = ["Task", "Context", "TASK_OPTIONS", "current_request"]

P = ParamSpec("P")
R = TypeVar("R")

#: Options accepted by ``@app.task(...)``; anything else is a ConfigurationError.
TASK_OPTIONS: dict[str, Any] = {
    "name": None,
    "bind": False,
    "base": None,
    "max_retries": 3,
    "default_retry_delay": 180,
    "autoretry_for": (),
    "dont_autoretry_for": (),
    "retry_kwargs": None,
    "retry_backoff": False,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "acks_late": None,
    "acks_on_failure_or_timeout": None,
    "reject_on_worker_lost": None,
    "ignore_result": None,
    "store_errors_even_if_ignored": None,
    "track_started": None,
    "rate_limit": None,
    "time_limit": None,
    "soft_time_limit": None,
    "queue": None,
    "routing_key": None,
    "exchange": None,
    "priority": None,
    "serializer": None,
    "compression": None,
    "expires": None,
    "shadow_name": None,
    "typing": True,
}

_request_var: ContextVar[Context | None] = ContextVar("celeriac_request", default=None)


def current_request() -> Context | None:
    """The request of the task executing in this thread / asyncio task, if any."""
    return _request_var.get()


class Context:
    """``task.request``: what the worker knows about the current execution.

    Attribute access with Celery's names; missing attributes read as the defaults below.
    """

    id: str | None = None
    name: str | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = {}
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    hostname: str | None = None
    delivery_info: Mapping[str, Any] = {}
    parent_id: str | None = None
    root_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    headers: Mapping[str, Any] | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    origin: str | None = None
    is_eager: bool = False
    called_directly: bool = True
    timelimit: tuple[float | None, float | None] = (None, None)
    callbacks: list[Any] | None = None
    errbacks: list[Any] | None = None
    chain: list[Any] | None = None
    chord: Any = None
    ignore_result: bool = False
    shadow: str | None = None

    def __init__(self, mapping: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if mapping:
            self.__dict__.update(mapping)
        if kwargs:
            self.__dict__.update(kwargs)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"<Context {self.__dict__!r}>"


_EMPTY_CONTEXT = Context()


class Task(Generic[P, R]):
    """A registered task. ``Task[P, R]`` types ``delay``'s arguments like the function's."""

    def __init__(self, app: Celeriac, fun: Callable[..., Any], **options: Any) -> None:
        unknown = set(options) - set(TASK_OPTIONS)
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigurationError.unknown_key(key, TASK_OPTIONS, what="task option")
        self.app = app
        self.run = fun
        opts = {**TASK_OPTIONS, **options}
        self.name: str = opts["name"] or f"{fun.__module__}.{fun.__qualname__}"
        self.bind: bool = bool(opts["bind"])
        self.is_coroutine: bool = inspect.iscoroutinefunction(fun)
        self.max_retries: int | None = opts["max_retries"]
        self.default_retry_delay: float = opts["default_retry_delay"]
        self.autoretry_for: tuple[type[BaseException], ...] = tuple(opts["autoretry_for"] or ())
        self.dont_autoretry_for: tuple[type[BaseException], ...] = tuple(
            opts["dont_autoretry_for"] or ()
        )
        self.retry_kwargs: dict[str, Any] = dict(opts["retry_kwargs"] or {})
        self.retry_backoff: bool | float = opts["retry_backoff"]
        self.retry_backoff_max: float = opts["retry_backoff_max"]
        self.retry_jitter: bool = opts["retry_jitter"]
        self.rate_limit: str | float | None = opts["rate_limit"]
        self.queue: str | None = opts["queue"]
        self.routing_key: str | None = opts["routing_key"]
        self.exchange: str | None = opts["exchange"]
        self.priority: int | None = opts["priority"]
        self.expires: float | datetime | None = opts["expires"]
        self.shadow_name: str | None = opts["shadow_name"]
        self.typing: bool = opts["typing"]
        # Options whose default comes from app.conf (task_<option>) when left as None.
        self._from_conf: dict[str, Any] = {
            key: opts[key]
            for key in (
                "acks_late",
                "acks_on_failure_or_timeout",
                "reject_on_worker_lost",
                "ignore_result",
                "store_errors_even_if_ignored",
                "track_started",
                "time_limit",
                "soft_time_limit",
                "serializer",
                "compression",
            )
        }
        self.__doc__ = fun.__doc__
        self.__name__ = getattr(fun, "__name__", self.name)
        self.__module__ = fun.__module__
        self.__wrapped__ = fun

    # Settings that fall back to the app's task_* configuration --------------------------

    def _conf(self, key: str, conf_key: str) -> Any:
        value = self._from_conf[key]
        return self.app.conf[conf_key] if value is None else value

    @property
    def acks_late(self) -> bool:
        return bool(self._conf("acks_late", "task_acks_late"))

    @property
    def acks_on_failure_or_timeout(self) -> bool:
        return bool(self._conf("acks_on_failure_or_timeout", "task_acks_on_failure_or_timeout"))

    @property
    def reject_on_worker_lost(self) -> bool:
        return bool(self._conf("reject_on_worker_lost", "task_reject_on_worker_lost"))

    @property
    def ignore_result(self) -> bool:
        return bool(self._conf("ignore_result", "task_ignore_result"))

    @property
    def store_errors_even_if_ignored(self) -> bool:
        return bool(self._conf("store_errors_even_if_ignored", "task_store_errors_even_if_ignored"))

    @property
    def track_started(self) -> bool:
        return bool(self._conf("track_started", "task_track_started"))

    @property
    def time_limit(self) -> float | None:
        return self._conf("time_limit", "task_time_limit")

    @property
    def soft_time_limit(self) -> float | None:
        return self._conf("soft_time_limit", "task_soft_time_limit")

    @property
    def serializer(self) -> str:
        return self._conf("serializer", "task_serializer")

    @property
    def compression(self) -> str | None:
        return self._conf("compression", "task_compression")

    # Calling ------------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now (a coroutine for ``async def`` tasks)."""
        if self.bind:
            return self.run(self, *args, **kwargs)  # type: ignore[no-any-return]
        return self.run(*args, **kwargs)  # type: ignore[no-any-return]

    @property
    def request(self) -> Context:
        return _request_var.get() or _EMPTY_CONTEXT

    def push_request(self, context: Mapping[str, Any] | Context) -> Token[Context | None]:
        ctx = context if isinstance(context, Context) else Context(context)
        return _request_var.set(ctx)

    def pop_request(self, token: Token[Context | None]) -> None:
        _request_var.reset(token)

    # Sending ------------------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send the task with these arguments; returns at once with an AsyncResult."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task (see :meth:`Celeriac.send_task` for the options)."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)  # type: ignore[return-value]
        return self.app.send_task(self.name, args, kwargs, task=self, **options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """``delay`` for async code: awaits the broker's acceptance on the running loop."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        if self.app.conf.task_always_eager:
            return await self.aapply(args, kwargs, **options)  # type: ignore[return-value]
        return await self.app.asend_task(self.name, args, kwargs, task=self, **options)

    def delay_many(self, arg_lists: Iterable[Sequence[Any]]) -> list[AsyncResult]:
        """Send one call per item of ``arg_lists`` (positional arguments), in a few broker
        calls instead of one round trip each; returns their AsyncResults, in order."""
        return self.apply_async_many((args, None) for args in arg_lists)

    def apply_async_many(
        self,
        calls: Iterable[tuple[Sequence[Any] | None, Mapping[str, Any] | None]],
        **options: Any,
    ) -> list[AsyncResult]:
        """Send every ``(args, kwargs)`` of ``calls`` with the same options (see
        :meth:`Celeriac.send_many`)."""
        if self.app.conf.task_always_eager:
            return [self.apply(args, kwargs, **options) for args, kwargs in calls]
        return self.app.send_many(self.name, calls, task=self, **options)

    async def adelay_many(self, arg_lists: Iterable[Sequence[Any]]) -> list[AsyncResult]:
        """``delay_many`` for async code."""
        return await self.aapply_async_many((args, None) for args in arg_lists)

    async def aapply_async_many(
        self,
        calls: Iterable[tuple[Sequence[Any] | None, Mapping[str, Any] | None]],
        **options: Any,
    ) -> list[AsyncResult]:
        """``apply_async_many`` for async code."""
        if self.app.conf.task_always_eager:
            return [await self.aapply(args, kwargs, **options) for args, kwargs in calls]
        return await self.app.asend_many(self.name, calls, task=self, **options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Execute in this process and return an EagerResult (no broker, no worker)."""
        from .eager import apply_eagerly

        return apply_eagerly(self, args, kwargs, **options)

    async def aapply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        from .eager import aapply_eagerly

        return await aapply_eagerly(self, args, kwargs, **options)

    def AsyncResult(self, task_id: str) -> AsyncResult:
        from .result import AsyncResult

        return AsyncResult(task_id, app=self.app, task_name=self.name)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments (for ``link``, chains, ...)."""
        from .canvas import Signature

        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: parent results are not prepended to its arguments."""
        from .canvas import Signature

        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        from .canvas import Signature

        return Signature(
            self.name, tuple(args or ()), dict(kwargs or {}), options=options, app=self.app
        )

    # Retrying ------------------------------------------------------------------------------

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """End this attempt and run the task again later (raises :class:`Retry`).

        The worker publishes the next attempt (same task id, ``retries + 1``) once this one
        has ended, so a retry is never lost between the two. Past ``max_retries`` the
        original ``exc`` is raised (or :class:`MaxRetriesExceededError` without one).

        Raises:
            Retry: always, when a retry is due.
        """
        request = self.request
        if request.called_directly and not request.is_eager:
            raise RuntimeError(
                f"{self.name}.retry() was called outside a worker execution: "
                "call the task with delay()/apply_async() or apply()"
            ) from exc
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}"
            )
        when: float | datetime | None = eta
        if when is None:
            when = self.default_retry_delay if countdown is None else countdown
        sig = {
            "args": list(request.args if args is None else args),
            "kwargs": dict(request.kwargs if kwargs is None else kwargs),
            "options": options,
        }
        retry = Retry(exc=exc, when=when, sig=sig)  # type: ignore[arg-type]
        if throw:
            raise retry
        return retry

    def autoretry(self, exc: BaseException) -> None:
        """Turn ``exc`` into a retry when it is one of ``autoretry_for``.

        Returns None when ``exc`` does not qualify. Raises :class:`Retry` when it does and
        retries remain; raises ``exc`` itself when they are used up.
        """
        if not self.autoretry_for or not isinstance(exc, self.autoretry_for):
            return
        if self.dont_autoretry_for and isinstance(exc, self.dont_autoretry_for):
            return
        kwargs = dict(self.retry_kwargs)
        countdown = kwargs.pop("countdown", None)
        if self.retry_backoff:
            countdown = backoff_interval(
                factor=float(self.retry_backoff),
                retries=self.request.retries,
                maximum=self.retry_backoff_max,
                full_jitter=self.retry_jitter,
            )
        self.retry(exc=exc, countdown=countdown, **kwargs)

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main}>"


def backoff_interval(
    factor: float, retries: int, maximum: float, full_jitter: bool = False
) -> float:
    """Exponential backoff: ``factor * 2**retries`` capped at ``maximum``, with full jitter."""
    countdown = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(int(countdown) + 1)
    return max(0.0, float(countdown))


#: Type of what ``@app.task`` may wrap.
TaskFunction = Callable[..., Any] | Callable[..., Awaitable[Any]]
