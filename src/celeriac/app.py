"""The application: configuration, the task registry, and sending tasks.

``Celeriac`` is also exported as ``Celery`` so that existing code changes only its import.

Configuration precedence, highest first: arguments given to ``Celeriac(...)`` (``broker=``,
``backend=``, keyword settings), then ``CELERIAC_*`` environment variables (read when the
app is created, never at import), then ``config_from_object``, then defaults. Direct
``app.conf.update(...)`` calls set values as given.

Broker connections and result backends are bound to an event loop, so the app keeps one of
each per loop: the sync API (``delay()``, ``get()``) uses the process's portal loop, async
code (``adelay()``, ``await result``) uses the loop it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, overload

from .config import Settings, settings_from_env, settings_from_object
from .exceptions import AlreadyRegistered, NotRegistered
from .messaging.connection import Connection
from .messaging.producer import Producer
from .messaging.transports.base import Outgoing
from .protocol import build_task_message
from .task import Task, current_request
from .utils import portal
from .utils.ids import uuid4_str

if TYPE_CHECKING:
    from .backends.base import Backend
    from .control import Control
    from .result import AsyncResult
    from .routing import Router
    from .worker.worker import WorkController

__all__ = ["Celeriac", "Celery", "TaskRegistry", "current_app", "shared_task"]

_current_app: Celeriac | None = None
_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []
_all_apps: weakref.WeakSet[Celeriac] = weakref.WeakSet()

#: Options ``send_task`` passes to the message builder under another name, or uses itself.
#: Messages per broker call of :meth:`Celeriac.send_many`.
SEND_MANY_BATCH = 1000

_SEND_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "task_id",
        "queue",
        "exchange",
        "routing_key",
        "priority",
        "headers",
        "link",
        "link_error",
        "serializer",
        "compression",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "shadow",
        "retries",
        "root_id",
        "parent_id",
        "group_id",
        "group_index",
        "reply_to",
        "chain",
        "chord",
        "task",
        "origin",
        "argsrepr",
        "kwargsrepr",
        "expires_at",
    }
)


def current_app() -> Celeriac:
    """The most recently created app (a default one is made on first use)."""
    global _current_app
    if _current_app is None:
        _current_app = Celeriac("default")
    return _current_app


class TaskRegistry(dict[str, Task[Any, Any]]):
    """Task name -> Task. A missing name raises :class:`NotRegistered`."""

    def __missing__(self, key: str) -> Task[Any, Any]:
        raise NotRegistered(key)

    def regular(self) -> dict[str, Task[Any, Any]]:
        return {k: v for k, v in self.items() if not k.startswith("celery.")}


class Celeriac:
    """A celeriac application."""

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] | None = None,
        config_source: Any = None,
        set_as_current: bool = True,
        environ: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        global _current_app
        self.main = main or "__main__"
        self.conf = Settings()
        explicit: dict[str, Any] = dict(settings)
        if broker is not None:
            explicit["broker_url"] = broker
        if backend is not None:
            explicit["result_backend"] = backend
        if include is not None:
            explicit["include"] = list(include)
        env = settings_from_env(os.environ if environ is None else environ)
        #: Values that later config_from_object calls must not override.
        self._pinned: dict[str, Any] = {**env, **explicit}
        if config_source is not None:
            self.conf.update(settings_from_object(config_source))
        self.conf.update(self._pinned)
        self.tasks = TaskRegistry()
        #: User bootsteps: ``app.steps['worker'].add(MyStep)``, ``app.steps['consumer']``.
        self.steps: dict[str, set[Any]] = {"worker": set(), "consumer": set()}
        #: Stable per-process client id, used as ``reply_to`` like Celery's oid.
        self.oid = str(uuid.uuid4())
        self._router: Router | None = None
        self._connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._producers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Producer] = (
            weakref.WeakKeyDictionary()
        )
        self._backends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Backend] = (
            weakref.WeakKeyDictionary()
        )
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        #: Per loop: the dispatcher of ``task-sent`` events (``task_send_sent_event``).
        self._event_dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        for fun, opts in _shared_tasks:
            self._register(fun, opts)
        _all_apps.add(self)
        if set_as_current:
            _current_app = self

    def __repr__(self) -> str:
        return f"<Celeriac {self.main} at {id(self):#x}>"

    # -- configuration ----------------------------------------------------------------------

    def config_from_object(self, obj: Any, namespace: str | None = None) -> None:
        """Load settings from a module, class, object, dict, or ``"pkg.module"`` name."""
        self.conf.update(settings_from_object(obj, namespace=namespace))
        self.conf.update(self._pinned)
        self._router = None

    @property
    def router(self) -> Router:
        if self._router is None:
            from .routing import Router

            self._router = Router(self)
        return self._router

    # -- tasks ------------------------------------------------------------------------------

    @overload
    def task(self, fun: Callable[..., Any], /) -> Task[Any, Any]: ...

    @overload
    def task(self, **options: Any) -> Callable[[Callable[..., Any]], Task[Any, Any]]: ...

    def task(self, fun: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function (sync or ``async def``) as a task; usable with or without ().

        Unknown options raise ConfigurationError naming the closest known option.
        """
        if fun is not None and callable(fun) and not options:
            return self._register(fun, {})

        def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(f, options)

        return decorate

    def _register(self, fun: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
        base = options.pop("base", None) or Task
        task = base(self, fun, **options)
        existing = self.tasks.get(task.name)
        if existing is not None and existing.run is not fun:
            same_source = getattr(existing.run, "__code__", None) == getattr(fun, "__code__", None)
            if not same_source:
                raise AlreadyRegistered(
                    f"task name {task.name!r} is already registered for {existing.run!r}"
                )
        self.tasks[task.name] = task
        return task

    def register_task(self, task: Task[Any, Any]) -> Task[Any, Any]:
        self.tasks[task.name] = task
        return task

    def task_modules(self) -> set[str]:
        """Modules that define registered tasks (exceptions from them may be rebuilt)."""
        return {getattr(t.run, "__module__", "") for t in self.tasks.values()} - {""}

    def import_default_modules(self) -> None:
        """Import the modules named by ``imports`` and ``include`` (they register tasks)."""
        import importlib

        for name in [*(self.conf.imports or ()), *(self.conf.include or ())]:
            importlib.import_module(name)

    # -- connections, per event loop --------------------------------------------------------

    def connection_for(self, url: str | None = None) -> Connection:
        """A new, unconnected broker Connection configured from this app's settings."""
        conf = self.conf
        return Connection(
            url or conf.broker_url,
            transport_options=conf.broker_transport_options or {},
            connect_timeout=conf.broker_connection_timeout or 4.0,
            max_retries=conf.broker_connection_max_retries,
        )

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def get_connection(self) -> Connection:
        """The connected broker connection of the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        conn = self._connections.get(loop)
        if conn is not None:
            return conn
        async with self._lock():
            conn = self._connections.get(loop)
            if conn is None:
                conn = self.connection_for()
                await conn.connect()
                self._connections[loop] = conn
        return conn

    async def get_producer(self) -> Producer:
        loop = asyncio.get_running_loop()
        producer = self._producers.get(loop)
        if producer is None:
            producer = self._producers[loop] = Producer(await self.get_connection())
        return producer

    def backend_for(self, url: str | None = None) -> Backend:
        """A new, unconnected result backend configured from this app's settings."""
        from .backends import get_backend_cls

        conf = self.conf
        url = url if url is not None else conf.result_backend
        expires = conf.result_expires
        if isinstance(expires, timedelta):
            expires = expires.total_seconds()
        cls = get_backend_cls(url)
        return cls(
            url,
            expires=expires,
            serializer=conf.result_serializer,
            accept=conf.result_accept_content or conf.accept_content,
            options=conf.result_backend_transport_options or {},
        )

    async def get_backend(self) -> Backend:
        """The connected result backend of the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        backend = self._backends.get(loop)
        if backend is not None:
            return backend
        async with self._lock():
            backend = self._backends.get(loop)
            if backend is None:
                backend = self.backend_for()
                await backend.connect()
                self._backends[loop] = backend
        return backend

    def connected_backend(self) -> Backend | None:
        """The backend sync calls from this thread use, if one is connected already (no
        I/O: for paths that skip the event loop, see ``Backend.wait_sync``)."""
        return self._backends.get(portal.caller_loop())

    async def aclose(self) -> None:
        """Close the running loop's connection and backend."""
        loop = asyncio.get_running_loop()
        conn = self._connections.pop(loop, None)
        self._producers.pop(loop, None)
        self._event_dispatchers.pop(loop, None)
        backend = self._backends.pop(loop, None)
        if conn is not None:
            await conn.close()
        if backend is not None:
            await backend.close()

    def close(self) -> None:
        """Close sync code's connections and backends: this thread's and the portal's."""
        if portal.in_portal_thread():
            raise RuntimeError("app.close() called on the portal loop: use await app.aclose()")
        if self._uses(portal.caller_loop()):
            portal.run(self.aclose())
        if portal.portal_started() and self._uses(portal.get_loop()):
            portal.run_on_portal(self.aclose())

    def _uses(self, loop: asyncio.AbstractEventLoop) -> bool:
        return loop in self._connections or loop in self._backends

    # -- sending ----------------------------------------------------------------------------

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send a task by name and return its AsyncResult once the broker holds the message.

        Options (Celery's): ``countdown``, ``eta``, ``expires`` (seconds or datetime),
        ``task_id``, ``queue``, ``exchange``, ``routing_key``, ``priority``, ``headers``,
        ``link``, ``link_error``, ``serializer``, ``compression``, ``ignore_result``,
        ``time_limit``, ``soft_time_limit``, ``shadow``.
        """
        if not portal.in_portal_thread() and not self.conf.task_send_sent_event:
            # Sync callers publish over a blocking connection where the transport has one,
            # skipping the event loop (see Transport.publish_sync); the first call to a
            # queue, and any call the fast path cannot make, go through the loop.
            producer = self._producers.get(portal.caller_loop())
            if producer is not None:
                from .result import AsyncResult

                outgoing, route, task_id = self.build_outgoing(name, args, kwargs, **options)
                if not producer.publish_sync(outgoing, route.queue):
                    portal.run(self._publish_built(outgoing, route, name))
                return AsyncResult(task_id, app=self, task_name=name)
        return portal.run(self.asend_task(name, args, kwargs, **options))

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``send_task`` for async code, on the running loop."""
        from .result import AsyncResult

        outgoing, route, task_id = self.build_outgoing(name, args, kwargs, **options)
        await self._publish_built(outgoing, route, name)
        return AsyncResult(task_id, app=self, task_name=name)

    async def _publish_built(self, outgoing: Any, route: Any, name: str) -> None:
        producer = await self.get_producer()
        batch = (outgoing,)
        if self.conf.task_send_sent_event:
            # The task and its task-sent event leave in one broker call.
            batch = (outgoing, await self._task_sent_event(outgoing, route, name))
        await producer.publish_many(batch, declare=(route.queue,))

    def send_many(
        self,
        name: str,
        calls: Iterable[tuple[Sequence[Any] | None, Mapping[str, Any] | None]],
        **options: Any,
    ) -> list[AsyncResult]:
        """Send many calls of one task; returns their AsyncResults once the broker holds
        them all.

        ``calls`` yields ``(args, kwargs)`` pairs; ``options`` (those of :meth:`send_task`
        except ``task_id``: every call gets its own id) apply to every call. Messages go
        out in batches of :data:`SEND_MANY_BATCH`, one broker call each, instead of one
        round trip per task; each is the message ``send_task`` would have sent.
        """
        return portal.run(self.asend_many(name, calls, **options))

    async def asend_many(
        self,
        name: str,
        calls: Iterable[tuple[Sequence[Any] | None, Mapping[str, Any] | None]],
        **options: Any,
    ) -> list[AsyncResult]:
        """``send_many`` for async code, on the running loop."""
        from .protocol import MessageTemplate
        from .result import AsyncResult

        if "task_id" in options:
            raise ValueError("send_many() gives every call its own id: task_id is not an option")
        producer = await self.get_producer()
        send_events = self.conf.task_send_sent_event
        ids: list[str] = []
        batch: list[Any] = []
        queues: dict[str, Any] = {}
        template: MessageTemplate | None = None
        sending: asyncio.Future[None] | None = None
        fixed_route = self._route_is_fixed(options)
        sent = in_flight = 0  # calls the broker holds; calls in the batch being published
        try:
            for args, kwargs in calls:
                if template is None:
                    outgoing, route, task_id = self.build_outgoing(name, args, kwargs, **options)
                    if fixed_route:
                        template = self._template_for(outgoing.message, options)
                        first = outgoing
                else:
                    task_id = uuid4_str()
                    outgoing = Outgoing(
                        template.build(task_id, args or (), kwargs),
                        first.exchange,
                        first.routing_key,
                        first.not_before,
                    )
                ids.append(task_id)
                batch.append(outgoing)
                queues.setdefault(route.queue.name, route.queue)
                if send_events:
                    batch.append(await self._task_sent_event(outgoing, route, name))
                if len(batch) >= SEND_MANY_BATCH:
                    # One batch in flight while the next is built: the broker stores one
                    # while this process encodes the other.
                    if sending is not None:
                        await sending
                        sent, sending = sent + in_flight, None
                    in_flight = len(ids) - sent
                    sending = asyncio.ensure_future(
                        producer.publish_many(batch, declare=tuple(queues.values()))
                    )
                    await asyncio.sleep(0)  # let it write the batch before building the next
                    batch = []
            if sending is not None:
                await sending
                sent, sending = sent + in_flight, None
            if batch:
                await producer.publish_many(batch, declare=tuple(queues.values()))
        except BaseException as exc:
            # A batch already handed to the broker is not abandoned half way: learn its
            # fate, then say which calls were sent, so a retry can skip them.
            if sending is not None:
                try:
                    await sending
                    sent += in_flight
                except BaseException:
                    pass
            if sent and isinstance(exc, Exception):
                exc.add_note(
                    f"send_many: the first {sent} of the calls were sent before this error; "
                    "their task ids are in the exception's sent_task_ids"
                )
                with contextlib.suppress(AttributeError, TypeError):
                    exc.sent_task_ids = ids[:sent]  # type: ignore[attr-defined]
            raise
        return [AsyncResult(task_id, app=self, task_name=name) for task_id in ids]

    def _route_is_fixed(self, options: Mapping[str, Any]) -> bool:
        """True when every call of a send_many goes where the first one goes."""
        explicit = options.get("queue") or options.get("exchange") or options.get("routing_key")
        return bool(explicit) or not self.router.routers

    def _template_for(self, first: Any, options: Mapping[str, Any]) -> Any:
        """A template for the calls after ``first``, or None where each needs a full build
        (a compressed message)."""
        from .protocol import MessageTemplate

        if "compression" in first.headers:
            return None
        own_reprs = options.get("argsrepr") is None and options.get("kwargsrepr") is None
        return MessageTemplate(first, own_reprs)

    async def _task_sent_event(self, outgoing: Any, route: Any, name: str) -> Any:
        """The ``task-sent`` event message for a task message about to be published."""
        loop = asyncio.get_running_loop()
        dispatcher = self._event_dispatchers.get(loop)
        if dispatcher is None:
            # Imported here, as Worker() imports the worker: events sit above the app.
            from .events.dispatcher import EventDispatcher

            conf = self.conf
            dispatcher = EventDispatcher(
                await self.get_connection(),
                exchange=conf.event_exchange or "celeryev",
                serializer=conf.event_serializer or "json",
            )
            await dispatcher.attach()
            self._event_dispatchers[loop] = dispatcher
        headers = outgoing.message.headers
        event = dispatcher.stamp(
            "task-sent",
            {
                "uuid": headers.get("id"),
                "root_id": headers.get("root_id"),
                "parent_id": headers.get("parent_id"),
                "name": name,
                "args": headers.get("argsrepr"),
                "kwargs": headers.get("kwargsrepr"),
                "retries": headers.get("retries") or 0,
                "eta": headers.get("eta"),
                "expires": headers.get("expires"),
                "queue": route.queue.name,
                "exchange": outgoing.exchange,
                "routing_key": outgoing.routing_key,
            },
        )
        return dispatcher.outgoing(event)

    def build_outgoing(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> tuple[Any, Any, str]:
        """The message for a task call, where it goes, and its id (no I/O).

        Returns ``(Outgoing, Route, task_id)``. Used by ``send_task`` and by the worker
        (retries, callbacks) so that every message is built one way.
        """
        unknown = options.keys() - _SEND_OPTIONS
        if unknown:
            from .exceptions import ConfigurationError

            raise ConfigurationError.unknown_key(sorted(unknown)[0], _SEND_OPTIONS, "send option")
        conf = self.conf
        get = options.get
        task = get("task") or self.tasks.get(name)
        task_id = get("task_id")
        fresh_id = not task_id
        if fresh_id:
            task_id = uuid4_str()
        args = list(args or ())
        kwargs = dict(kwargs or {})
        route = self.router.route(name, args, kwargs, options, task)

        # The clock is read only for the times a call has (most have none).
        eta = get("eta")
        countdown = get("countdown")
        expires = get("expires")
        if expires is None and task is not None:
            expires = task.expires
        now = (
            datetime.now(UTC)
            if eta is not None or countdown is not None or expires is not None
            else None
        )
        if countdown is not None and eta is None:
            eta = now + timedelta(seconds=float(countdown))  # type: ignore[operator]
        elif isinstance(eta, int | float):
            eta = datetime.fromtimestamp(float(eta), UTC)
        if isinstance(expires, int | float):
            expires = now + timedelta(seconds=float(expires))  # type: ignore[operator]
        elif isinstance(expires, timedelta):
            expires = now + expires  # type: ignore[operator]

        parent = current_request()
        parent_id = get("parent_id")
        root_id = get("root_id")
        if parent is not None and parent.id and not parent.is_eager:
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id or parent.id
        priority = get("priority")
        if priority is None:
            priority = (
                task.priority
                if task is not None and task.priority is not None
                else conf.task_default_priority
            )

        ignore_result = get("ignore_result")
        if ignore_result is None:
            ignore_result = task.ignore_result if task is not None else conf.task_ignore_result
        if task is not None:
            time_limit = get("time_limit") if "time_limit" in options else task.time_limit
            soft_time_limit = (
                get("soft_time_limit") if "soft_time_limit" in options else task.soft_time_limit
            )
            serializer = get("serializer") or task.serializer
            compression = get("compression") or task.compression
        else:
            time_limit = get("time_limit", conf.task_time_limit)
            soft_time_limit = get("soft_time_limit", conf.task_soft_time_limit)
            serializer = get("serializer") or conf.task_serializer
            compression = get("compression") or conf.task_compression
        message = build_task_message(
            name,
            task_id,
            args,
            kwargs,
            eta=eta,
            expires=expires,
            retries=int(get("retries") or 0),
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            root_id=root_id,
            parent_id=parent_id,
            group_id=get("group_id"),
            group_index=get("group_index"),
            shadow=get("shadow"),
            origin=get("origin"),
            ignore_result=bool(ignore_result),
            callbacks=_signatures(get("link")),
            errbacks=_signatures(get("link_error")),
            chain=get("chain"),
            chord=get("chord"),
            argsrepr=get("argsrepr"),
            kwargsrepr=get("kwargsrepr"),
            reply_to=get("reply_to") or self.oid,
            priority=priority,
            serializer=serializer,
            compression=compression,
            headers=get("headers"),
        )
        if fresh_id:
            # A new random id serves as the delivery tag too (as MessageTemplate's do),
            # which saves the transport drawing one. An id the caller chose may be sent
            # again, and tags must not repeat, so those get a tag of their own.
            message.delivery_tag = task_id
        not_before = eta.timestamp() if eta is not None and eta > now else None  # type: ignore[operator]
        outgoing = Outgoing(message, route.exchange, route.routing_key, not_before)
        return outgoing, route, task_id

    @property
    def control(self) -> Control:
        """Remote control of this app's workers: ``app.control.inspect().active()``."""
        control = self.__dict__.get("_control")
        if control is None:
            from .control import Control

            control = self.__dict__["_control"] = Control(self)
        return control

    def AsyncResult(self, task_id: str, task_name: str | None = None) -> AsyncResult:
        from .result import AsyncResult

        return AsyncResult(task_id, app=self, task_name=task_name)

    # -- worker -----------------------------------------------------------------------------

    def Worker(self, **kwargs: Any) -> WorkController:
        """A worker for this app (``celeriac worker`` builds one of these)."""
        from .worker.worker import WorkController

        return WorkController(self, **kwargs)


def _signatures(value: Any) -> list[dict[str, Any]] | None:
    """``link=``/``link_error=`` values (one or a list of signatures) in wire form."""
    if value is None:
        return None
    from .canvas import Signature

    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        if isinstance(item, Signature):
            out.append(item.to_dict())
        elif isinstance(item, Mapping):
            out.append(dict(item))
        elif isinstance(item, Task):
            out.append(item.s().to_dict())
        else:
            raise TypeError(f"link/link_error takes signatures, not {item!r}")
    return out


def shared_task(fun: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Register a task with every app, present and future (for reusable libraries)."""

    def decorate(f: Callable[..., Any]) -> Any:
        _shared_tasks.append((f, dict(options)))
        tasks = [app._register(f, dict(options)) for app in list(_all_apps)]
        return tasks[-1] if tasks else current_app()._register(f, dict(options))

    if fun is not None and callable(fun) and not options:
        return decorate(fun)
    return decorate


#: Celery's name, so that ``from celeriac import Celery`` is a one-line migration.
Celery = Celeriac
