"""Bootsteps: the worker and its consumer are built from small, ordered components.

A :class:`Step` names the steps it ``requires``; a :class:`Blueprint` gathers its default
steps, the ones passed to it and the ones users registered with
``app.steps['worker'].add(MyStep)`` (or ``['consumer']``), pulls in every requirement,
orders them (requirements first, ties broken by name so the order never depends on set
iteration, ``last`` steps at the end), creates them against the parent, starts them in
that order and stops them in reverse.

Hooks may be plain functions or coroutine functions: the worker is asyncio, and the
blueprint awaits whatever a hook returns when it is awaitable.

Example::

    class Audit(StartStopStep):
        requires = ("celeriac.worker.consumer.steps:Tasks",)

        def create(self, parent):
            return AuditLog(parent.hostname)   # has async start() and stop()

    app.steps["consumer"].add(Audit)
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol

from ._bootgraph import CyclicDependencyError, format_graph, resolve_steps, to_dot

__all__ = [
    "RUN",
    "CLOSE",
    "TERMINATE",
    "CyclicDependencyError",
    "Step",
    "StartStopStep",
    "ConsumerStep",
    "MessageConsumer",
    "Blueprint",
]

logger = logging.getLogger(__name__)

#: Blueprint states.
RUN, CLOSE, TERMINATE = 0x1, 0x2, 0x3

_STATE_NAMES = {None: "initializing", RUN: "running", CLOSE: "closing", TERMINATE: "terminating"}

#: The step a :class:`ConsumerStep` needs before it can attach consumers.
CONNECTION_STEP = "celeriac.worker.consumer.steps:Connection"

#: Method names the blueprint calls; a public method *close to* one of these on a step
#: subclass is almost certainly a typo and is warned about at class creation.
_HOOKS = frozenset(
    {"include_if", "include", "create", "start", "stop", "close", "terminate", "shutdown",
     "info", "get_consumers"}
)  # fmt: skip


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Step:
    """One component of a blueprint.

    Subclass and override the hooks you need. ``name`` defaults to
    ``"<module>:<QualifiedClassName>"``, the form ``requires`` strings use.

    Attributes:
        name: Unique key of the step in a blueprint.
        label: Short name for logs and graphs (the class name by default).
        requires: Steps started before this one: classes or ``"pkg.module:Class"``
            (``"pkg.module.Class"`` also works). Missing ones are pulled in.
        enabled: Default answer of :meth:`include_if`.
        last: Start after every other step (the consumer's event loop step).
    """

    name: ClassVar[str] = "celeriac.worker.bootsteps:Step"
    label: ClassVar[str | None] = None
    requires: ClassVar[tuple[type[Step] | str, ...]] = ()
    enabled: ClassVar[bool] = True
    last: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}:{cls.__qualname__}"
        if not isinstance(cls.requires, tuple | list):
            raise TypeError(f"{cls.__qualname__}.requires must be a tuple, got {cls.requires!r}")
        for attr, value in cls.__dict__.items():
            if attr.startswith("_") or attr in _HOOKS or not callable(value):
                continue
            close = difflib.get_close_matches(attr, _HOOKS, n=1, cutoff=0.85)
            if close:
                warnings.warn(
                    f"{cls.__qualname__}.{attr} is not a bootstep hook; did you mean {close[0]!r}?",
                    stacklevel=2,
                )

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        """Bind to ``parent``; runs for every resolved step, included or not."""

    @property
    def alias(self) -> str:
        """``label`` or the class name: how logs and graphs show this step."""
        return self.label or type(self).__name__

    def include_if(self, parent: Any) -> bool:
        """Whether this step takes part (e.g. only with ``--autoscale``)."""
        return self.enabled

    def include(self, parent: Any) -> bool:
        """Decide inclusion and, when included, call :meth:`create`."""
        if not self.include_if(parent):
            return False
        self._created(self._create_sync(parent))
        return True

    def _create_sync(self, parent: Any) -> Any:
        obj = self.create(parent)
        if inspect.iscoroutine(obj):
            obj.close()
            raise TypeError(
                f"{type(self).__qualname__}.create() must not be async: "
                "create objects there and do async set-up in start()"
            )
        return obj

    def _created(self, obj: Any) -> None:
        """Keep what :meth:`create` returned (plain steps do not)."""

    def create(self, parent: Any) -> Any:
        """Build what the step manages; runs at :meth:`Blueprint.apply`, synchronously."""
        return None

    def start(self, parent: Any) -> Awaitable[None] | None:
        """Start; may be a coroutine function."""
        return None

    def close(self, parent: Any) -> Awaitable[None] | None:
        """Stop taking new work, first thing in a blueprint stop (forward order)."""
        return None

    def stop(self, parent: Any) -> Awaitable[None] | None:
        """Stop gracefully (warm shutdown, or a restart after connection loss)."""
        return None

    def terminate(self, parent: Any) -> Awaitable[None] | None:
        """Stop now (cold shutdown); by default the same as :meth:`stop`."""
        return self.stop(parent)

    def shutdown(self, parent: Any) -> Awaitable[None] | None:
        """Release what survives restarts, once, when the parent goes away for good."""
        return None

    def info(self, parent: Any) -> dict[str, Any] | None:
        """Fields this step adds to the worker's ``stats``."""
        return None

    def __repr__(self) -> str:
        return f"<step: {self.alias}>"


class StartStopStep(Step):
    """A step that owns an object: ``obj = create(parent)``, started and stopped with it.

    ``obj.start()``/``obj.stop()``/``obj.terminate()`` may be sync or async; an object
    without ``terminate`` is stopped instead. ``create`` returning ``None`` makes the
    step a no-op.
    """

    obj: Any = None

    def _created(self, obj: Any) -> None:
        self.obj = obj

    def start(self, parent: Any) -> Awaitable[None] | None:
        return None if self.obj is None else self.obj.start()

    def stop(self, parent: Any) -> Awaitable[None] | None:
        return None if self.obj is None else self.obj.stop()

    def terminate(self, parent: Any) -> Awaitable[None] | None:
        if self.obj is None:
            return None
        terminate = getattr(self.obj, "terminate", None) or self.obj.stop
        result: Awaitable[None] | None = terminate()
        return result


class MessageConsumer(Protocol):
    """What :class:`ConsumerStep` needs from :class:`celeriac.messaging.consumer.Consumer`."""

    def run(self) -> Awaitable[None]: ...

    def stop(self) -> object: ...

    def close(self) -> Awaitable[None] | None: ...


class ConsumerStep(StartStopStep):
    """Attach your own message consumers to the worker's broker connection.

    Override :meth:`get_consumers`; each consumer's ``run()`` becomes a task at start.
    Stop (also on a connection-loss restart) stops them, waits up to ``stop_timeout``
    seconds for them to return, then closes them (settling what they hold); the next
    start asks :meth:`get_consumers` again, for the new connection.
    """

    requires: ClassVar[tuple[type[Step] | str, ...]] = (CONNECTION_STEP,)
    #: Seconds to wait for consumers to return after ``stop()`` before cancelling them.
    stop_timeout: ClassVar[float] = 10.0

    consumers: list[MessageConsumer]

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.consumers = []
        self._tasks: list[asyncio.Task[None]] = []

    def get_consumers(self, parent: Any) -> Sequence[MessageConsumer]:
        """Build the consumers (``parent.connection`` is up when this is called)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define get_consumers(parent)")

    async def start(self, parent: Any) -> None:
        self.consumers = list(self.get_consumers(parent) or ())
        for consumer in self.consumers:
            task = asyncio.ensure_future(consumer.run())
            task.add_done_callback(self._on_consumer_exit)
            self._tasks.append(task)

    def _on_consumer_exit(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "consumer of bootstep %s exited with an error",
                self.alias,
                exc_info=task.exception(),
            )

    async def stop(self, parent: Any) -> None:
        await self._close()

    async def terminate(self, parent: Any) -> None:
        await self._close()

    async def shutdown(self, parent: Any) -> None:
        await self._close()

    async def _close(self) -> None:
        consumers, tasks = self.consumers, self._tasks
        self.consumers, self._tasks = [], []
        for consumer in consumers:
            try:
                consumer.stop()
            except Exception:
                logger.exception("bootstep %s: error stopping consumer %r", self.alias, consumer)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
            for task in pending:
                logger.warning(
                    "bootstep %s: consumer did not stop within %ss, cancelling",
                    self.alias,
                    self.stop_timeout,
                )
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for consumer in consumers:
            try:
                await _maybe_await(consumer.close())
            except Exception:
                logger.exception("bootstep %s: error closing consumer %r", self.alias, consumer)


StepSpec = str | type[Step]
Callback = Callable[[], Awaitable[None] | None]


class Blueprint:
    """An ordered set of steps applied to a parent (the worker, or its consumer).

    Args:
        steps: Steps in addition to :attr:`default_steps` (classes or names).
        name: Key of the user steps in ``app.steps`` (``"worker"``, ``"consumer"``).
        on_start: Called before the first step starts.
        on_close: Called when a stop begins, before the steps' ``close``.
        on_stopped: Called after every step has stopped.
    """

    name: str | None = None
    default_steps: ClassVar[set[StepSpec]] = set()

    def __init__(
        self,
        steps: Iterable[StepSpec] | None = None,
        *,
        name: str | None = None,
        on_start: Callback | None = None,
        on_close: Callback | None = None,
        on_stopped: Callback | None = None,
    ) -> None:
        self.name = name or self.name or type(self).__qualname__
        self.types: list[StepSpec] = list(steps or ())
        self.on_start = on_start
        self.on_close = on_close
        self.on_stopped = on_stopped
        self.state: int | None = None
        #: Every resolved step, in boot order, included or not.
        self.order: list[Step] = []
        #: The included steps, in boot order: the ones started and stopped.
        self.steps: list[Step] = []
        self.started = 0
        self._classes: list[type[Step]] | None = None
        self._stopped = asyncio.Event()

    # --- building ---------------------------------------------------------------------

    def _user_steps(self, parent: Any) -> list[StepSpec]:
        registry = getattr(getattr(parent, "app", None), "steps", None)
        if registry is None or self.name is None:
            return []
        return list(registry.get(self.name, ()))

    def resolve(self, parent: Any = None) -> list[type[Step]]:
        """The step classes this blueprint would run for ``parent``, in boot order.

        Raises:
            CyclicDependencyError: Steps require each other in a loop.
            ConfigurationError: A step or requirement cannot be imported or is not a Step.
        """
        tiers = [list(self.default_steps), self.types, self._user_steps(parent)]
        return resolve_steps(tiers, Step)

    def apply(self, parent: Any, **kwargs: Any) -> Blueprint:
        """Resolve, order and create the steps for ``parent``.

        Every resolved step is instantiated with ``Step(parent, **kwargs)``; those whose
        :meth:`Step.include_if` is true run :meth:`Step.create` and make up :attr:`steps`.

        Raises:
            CyclicDependencyError: Steps require each other in a loop.
            ConfigurationError: A step or requirement cannot be imported or is not a Step.
        """
        classes = self.resolve(parent)
        order = [cls(parent, **kwargs) for cls in classes]
        included = [step for step in order if step.include(parent)]
        self._classes, self.order, self.steps = classes, order, included
        self.started = 0
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s boot order: %s", self.name, ", ".join(s.alias for s in included))
        return self

    def __getitem__(self, key: StepSpec) -> Step:
        """The applied step named ``key`` (a class or its name)."""
        name = key if isinstance(key, str) else key.name
        for step in self.order:
            if step.name == name:
                return step
        raise KeyError(name)

    # --- running ----------------------------------------------------------------------

    @property
    def human_state(self) -> str:
        """``initializing``, ``running``, ``closing`` or ``terminating``."""
        return _STATE_NAMES[self.state]

    async def start(self, parent: Any) -> None:
        """Start every included step in order.

        A step counts as started as soon as its ``start`` is called, so when one raises,
        the error propagates and a following :meth:`stop` also stops that step (it may
        hold half-acquired resources). A stop requested meanwhile ends the start loop.
        """
        self.state = RUN
        self._stopped.clear()
        self.started = 0
        await _maybe_await(self.on_start() if self.on_start else None)
        for index, step in enumerate(self.steps):
            if self.state != RUN:
                break
            logger.debug("%s: starting %s", self.name, step.alias)
            self.started = index + 1
            await _maybe_await(step.start(parent))

    async def _call_each(self, parent: Any, hook: str, steps: Iterable[Step]) -> None:
        for step in steps:
            method: Callable[[Any], Awaitable[None] | None] = {
                "close": step.close,
                "stop": step.stop,
                "terminate": step.terminate,
                "shutdown": step.shutdown,
            }[hook]
            logger.debug("%s: %s %s", self.name, hook, step.alias)
            try:
                await _maybe_await(method(parent))
            except Exception:
                logger.exception("%s: error in %s of bootstep %s", self.name, hook, step.alias)

    async def stop(self, parent: Any, close: bool = True, terminate: bool = False) -> None:
        """Stop the started steps in reverse order; idempotent.

        An error in one step is logged and the others are still stopped.

        Args:
            parent: The object the blueprint was applied to.
            close: First call ``on_close`` and every started step's ``close`` (in order).
            terminate: Call the steps' ``terminate`` (cold shutdown) instead of ``stop``.
        """
        if self.state in (CLOSE, TERMINATE):
            return
        if self.state is None:
            self.state = TERMINATE
            self._stopped.set()
            return
        self.state = CLOSE
        started = self.steps[: self.started]
        if close:
            try:
                await _maybe_await(self.on_close() if self.on_close else None)
            except Exception:
                logger.exception("%s: error in on_close", self.name)
            await self._call_each(parent, "close", started)
        await self._call_each(parent, "terminate" if terminate else "stop", reversed(started))
        self.started = 0
        try:
            await _maybe_await(self.on_stopped() if self.on_stopped else None)
        finally:
            self.state = TERMINATE
            self._stopped.set()

    async def shutdown(self, parent: Any) -> None:
        """Call every included step's ``shutdown`` in reverse order (final teardown)."""
        await self._call_each(parent, "shutdown", reversed(self.steps))

    async def restart(self, parent: Any, method: str = "stop") -> bool:
        """Stop the started steps (``method``: ``"stop"`` or ``"terminate"``), then start all.

        Used when the broker connection is lost: every step lets go of the old
        connection and attaches to the new one. Does nothing while the blueprint is
        shutting down.

        Returns:
            Whether the steps were started again.

        Raises:
            ValueError: Unknown ``method``.
        """
        if method not in ("stop", "terminate"):
            raise ValueError(f"restart method must be 'stop' or 'terminate', got {method!r}")
        if self.state in (CLOSE, TERMINATE):
            return False
        await self._call_each(parent, method, reversed(self.steps[: self.started]))
        self.started = 0
        if self.state in (CLOSE, TERMINATE):  # a stop arrived while we were stopping
            return False
        await self.start(parent)
        return True

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`stop` has finished; ``False`` if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def info(self, parent: Any) -> dict[str, Any]:
        """The merged :meth:`Step.info` of the included steps."""
        merged: dict[str, Any] = {}
        for step in self.steps:
            merged.update(step.info(parent) or {})
        return merged

    # --- showing ----------------------------------------------------------------------

    def _graph_classes(self) -> list[type[Step]]:
        return self._classes if self._classes is not None else self.resolve()

    def format_graph(self) -> str:
        """Boot order as text (``--print-boot-graph``): one line per step with requires."""
        excluded = {type(s) for s in self.order} - {type(s) for s in self.steps}
        return format_graph(self.name or "", self._graph_classes(), excluded)

    def to_dot(self) -> str:
        """The dependency graph in Graphviz ``dot`` syntax (edges: step -> requirement)."""
        return to_dot(self.name or "", self._graph_classes())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self.steps)} steps, {self.human_state}>"
