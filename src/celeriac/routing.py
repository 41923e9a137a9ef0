"""Where a task message goes: the queue, exchange and routing key for a task name.

The rules, in order: explicit ``queue=``/``exchange=``/``routing_key=`` options; then
``task_routes`` (a dict of glob or compiled-regex patterns, a router callable, or a list of
those, as in Celery); then the task's own ``queue``; then ``task_default_queue``.

As Celery does, a message for a queue on a direct exchange with no explicit exchange and
routing key is published to the default exchange ``""`` with the queue name as routing key
(spec/celery-wire.md 1.7), so every Celery peer routes it the same way.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigurationError
from .messaging.entities import Exchange, Queue

if TYPE_CHECKING:
    from .app import Celeriac
    from .task import Task

__all__ = ["Route", "Router", "queues_from_conf"]


@dataclass(frozen=True, slots=True)
class Route:
    queue: Queue
    exchange: str
    routing_key: str


def queues_from_conf(app: Celeriac) -> dict[str, Queue]:
    """The queues named by ``task_queues`` (Queue objects or names), by name."""
    conf = app.conf
    configured = conf.task_queues
    result: dict[str, Queue] = {}
    if configured:
        for q in configured:
            queue = q if isinstance(q, Queue) else make_queue(app, str(q))
            result[queue.name] = queue
    return result


def make_queue(app: Celeriac, name: str) -> Queue:
    """A queue as Celery creates missing ones: its own direct exchange, key = name."""
    conf = app.conf
    if name == conf.task_default_queue:
        ex_name = conf.task_default_exchange or name
        ex_type = conf.task_default_exchange_type or "direct"
        key = conf.task_default_routing_key or name
        return Queue(name, Exchange(ex_name, ex_type), key)
    return Queue(name, Exchange(name, "direct"), name)


class Router:
    """Resolves routes; built once per app and cached per task name where it can be."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self.routers = _compile_routes(app.conf.task_routes)
        self.queues = queues_from_conf(app)
        self._cache: dict[str, Route] = {}

    def queue(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            if not self.app.conf.task_create_missing_queues:
                raise ConfigurationError(
                    f"queue {name!r} is not defined in task_queues "
                    "and task_create_missing_queues is off",
                    key="task_queues",
                )
            queue = self.queues[name] = make_queue(self.app, name)
        return queue

    def route(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        task: Task[Any, Any] | None = None,
    ) -> Route:
        options = options or {}
        explicit = options.get("queue") or options.get("exchange") or options.get("routing_key")
        if not explicit and not self.routers:
            cached = self._cache.get(name)
            if cached is not None:
                return cached
        route = self._resolve(name, args, kwargs or {}, options, task)
        if not explicit and not self.routers:
            self._cache[name] = route
        return route

    def _resolve(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        task: Task[Any, Any] | None,
    ) -> Route:
        spec: dict[str, Any] = {}
        if not (options.get("queue") or options.get("exchange") or options.get("routing_key")):
            for router in self.routers:
                found = router(name, args, kwargs, options, task)
                if found:
                    spec = {"queue": found} if isinstance(found, str | Queue) else dict(found)
                    break
        for key in ("queue", "exchange", "routing_key"):
            if options.get(key):
                spec[key] = options[key]
        queue_opt = spec.get("queue") or (task.queue if task is not None else None)
        queue_opt = queue_opt or self.app.conf.task_default_queue
        queue = queue_opt if isinstance(queue_opt, Queue) else self.queue(str(queue_opt))
        exchange = spec.get("exchange")
        routing_key = spec.get("routing_key") or (task.routing_key if task is not None else None)
        if isinstance(exchange, Exchange):
            exchange = exchange.name
        if exchange is None and routing_key is None and queue.effective_exchange.type == "direct":
            return Route(queue, "", queue.name)
        return Route(
            queue,
            queue.effective_exchange.name if exchange is None else exchange,
            routing_key or queue.effective_routing_key,
        )


RouterFn = Callable[..., Any]


def _compile_routes(routes: Any) -> list[RouterFn]:
    if not routes:
        return []
    if isinstance(routes, Mapping) or callable(routes) or isinstance(routes, str):
        routes = [routes]
    return [_compile_one(r) for r in routes]


def _compile_one(route: Any) -> RouterFn:
    if callable(route):

        def call(name, args, kwargs, options, task):  # type: ignore[no-untyped-def]
            return route(name, args, kwargs, options, task=task)

        return call
    if isinstance(route, str):
        from .utils.imports import symbol_by_name

        return _compile_one(symbol_by_name(route))
    if isinstance(route, Mapping):
        patterns: list[tuple[Any, Any]] = []
        for pattern, target in route.items():
            if isinstance(pattern, re.Pattern):
                patterns.append((pattern, target))
            elif any(ch in pattern for ch in "*?["):
                patterns.append((re.compile(fnmatch.translate(pattern)), target))
            else:
                patterns.append((pattern, target))

        def match(name, args, kwargs, options, task):  # type: ignore[no-untyped-def]
            for pattern, target in patterns:
                if (pattern == name) if isinstance(pattern, str) else pattern.match(name):
                    return target
            return None

        return match
    raise ConfigurationError(
        f"task_routes entry {route!r} is not a dict, callable or name", key="task_routes"
    )
