"""``app.control``: remote control of the workers from Python (Celery's ``app.control``).

::

    app.control.ping(timeout=1.0)            # [{"w1@host": {"ok": "pong"}}, ...]
    app.control.inspect().active()           # {"w1@host": [request-info, ...], ...}
    app.control.revoke(task_id, terminate=True)
    app.control.rate_limit("proj.add", "10/m", destination=["w1@host"])

Every call has an ``async`` twin (``await app.control.aping()``, ``await
app.control.abroadcast(...)``, ``await app.control.inspect().aactive()``). Sync calls run on
the process's portal loop. Replies have Celery's shapes: ``broadcast`` returns a list of
``{node: reply}``, inspect methods one dict ``{node: reply}`` (None when nobody answered).

Revokes also go to the **revocation log**, a durable queue on the broker
(``celeriac.revoked``, one message per revoke, message TTL ``REVOKE_EXPIRES``). A worker
reads it when it starts, so a task revoked while no worker at all was listening is still
skipped. A worker is the only reader and puts every message back, so each one lasts
until its TTL.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .messaging.entities import DEFAULT_EXCHANGE, Queue
from .messaging.mailbox import Mailbox, Reply
from .messaging.message import Message
from .messaging.transports.base import Outgoing, Transport
from .utils import portal

if TYPE_CHECKING:
    from .app import Celeriac
    from .messaging.connection import Connection

__all__ = [
    "Control",
    "Inspect",
    "DuplicateNodenameWarning",
    "REVOCATION_LOG",
    "publish_revocations",
    "read_revocations",
]

#: Durable queue of revokes, read by every starting worker.
REVOCATION_LOG = "celeriac.revoked"
#: Seconds a revoke is remembered (Celery's ``CELERY_WORKER_REVOKE_EXPIRES``).
REVOKE_EXPIRES = 10_800.0
#: Most revoke messages a starting worker reads from the log.
REVOCATION_LOG_READ_LIMIT = 10_000


class DuplicateNodenameWarning(UserWarning):
    """Two workers answered with the same nodename: give each a unique ``-n``."""


def _log_queue() -> Queue:
    return Queue(REVOCATION_LOG, DEFAULT_EXCHANGE, durable=True, message_ttl=REVOKE_EXPIRES)


async def publish_revocations(connection: Connection, ids: Iterable[str]) -> None:
    """Add ``ids`` to the revocation log."""
    ids = [str(i) for i in ids]
    if not ids:
        return
    queue = _log_queue()
    await connection.declare(queue)
    body = orjson.dumps({"ids": ids, "at": time.time()})
    out = Outgoing(Message(body, properties={"delivery_mode": 2}), "", REVOCATION_LOG)

    async def publish(transport: Transport) -> None:
        await transport.publish([out])

    await connection.retrying(publish)


async def read_revocations(connection: Connection, conf: Any = None) -> dict[str, float]:
    """The ids in the revocation log still within ``REVOKE_EXPIRES``, with their age as a
    monotonic stamp; expired entries are removed, the others put back."""
    queue = _log_queue()
    await connection.declare(queue)

    async def fetch(transport: Transport) -> list[Message]:
        return await transport.fetch([REVOCATION_LOG], REVOCATION_LOG_READ_LIMIT, 0.0)

    messages = await connection.retrying(fetch)
    if not messages:
        return {}
    now, mono = time.time(), time.monotonic()
    found: dict[str, float] = {}
    keep, drop = [], []
    for message in messages:
        try:
            data = orjson.loads(message.body)
            at = float(data["at"])
            ids = [str(i) for i in data["ids"]]
        except (ValueError, KeyError, TypeError):
            drop.append(message)
            continue
        if now - at > REVOKE_EXPIRES:
            drop.append(message)
            continue
        keep.append(message)
        for task_id in ids:
            found[task_id] = mono - max(now - at, 0.0)

    async def settle(transport: Transport) -> None:
        if drop:
            await transport.ack(drop)
        if keep:
            await transport.reject(keep, True)

    await connection.retrying(settle)
    return found


class Control:
    """Remote control of the workers of ``app`` (see the module docstring).

    Args:
        app: The app whose broker and control settings are used.
    """

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def __repr__(self) -> str:
        return f"<Control {self.app.main}>"

    def inspect(
        self,
        destination: Collection[str] | None = None,
        timeout: float = 1.0,
        callback: Callable[[Reply], Any] | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> Inspect:
        """An :class:`Inspect` for these workers (all of them by default)."""
        return Inspect(self, destination, timeout, callback, limit, pattern, matcher)

    async def mailbox(self) -> Mailbox:
        """The mailbox on the running loop's connection."""
        conf = self.app.conf
        connection = await self.app.get_connection()
        return Mailbox(
            connection,
            conf.control_exchange or "celery",
            accept=tuple(conf.accept_content or ("json",)),
            queue_ttl=conf.control_queue_ttl,
            queue_expires=conf.control_queue_expires,
        )

    # -- the core ------------------------------------------------------------------------

    async def abroadcast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        destination: Collection[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: Callable[[Reply], Any] | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> list[dict[str, Any]] | None:
        """Send ``command`` to the workers; with ``reply``, the list of ``{node: reply}``."""
        mailbox = await self.mailbox()
        if not reply:
            await mailbox.cast(
                command, arguments, destination=destination, pattern=pattern, matcher=matcher
            )
            return None
        replies = await mailbox.call(
            command,
            arguments,
            destination=destination,
            pattern=pattern,
            matcher=matcher,
            timeout=timeout,
            limit=limit,
            callback=callback,
        )
        return [{r.hostname: r.value} for r in replies]

    def broadcast(self, command: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]] | None:
        """Sync :meth:`abroadcast`."""
        timeout = float(kwargs.get("timeout", 1.0))
        return portal.run(self.abroadcast(command, *args, **kwargs), _portal_timeout(timeout))

    # -- commands ------------------------------------------------------------------------

    async def aping(
        self, destination: Collection[str] | None = None, timeout: float = 1.0, **kwargs: Any
    ) -> list[dict[str, Any]]:
        return (
            await self.abroadcast(
                "ping", destination=destination, reply=True, timeout=timeout, **kwargs
            )
            or []
        )

    def ping(
        self, destination: Collection[str] | None = None, timeout: float = 1.0, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """``[{node: {"ok": "pong"}}, ...]`` from every live worker."""
        return portal.run(self.aping(destination, timeout, **kwargs), _portal_timeout(timeout))

    async def arevoke(
        self,
        task_id: str | Iterable[str],
        destination: Collection[str] | None = None,
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        ids = [task_id] if isinstance(task_id, str) else [str(t) for t in task_id]
        if not destination:
            await publish_revocations(await self.app.get_connection(), ids)
        return await self.abroadcast(
            "revoke",
            {"task_id": ids if len(ids) != 1 else ids[0], "terminate": terminate, "signal": signal},
            destination=destination,
            **kwargs,
        )

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: Collection[str] | None = None,
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Tell the workers to skip (and with ``terminate``, stop) these tasks."""
        timeout = float(kwargs.get("timeout", 1.0))
        coro = self.arevoke(task_id, destination, terminate, signal, **kwargs)
        return portal.run(coro, _portal_timeout(timeout))

    def terminate(
        self, task_id: str | Iterable[str], signal: str | int = "SIGTERM", **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.revoke(task_id, terminate=True, signal=signal, **kwargs)

    def revoke_by_stamped_headers(
        self,
        headers: Mapping[str, Any],
        destination: Collection[str] | None = None,
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        args = {"headers": dict(headers), "terminate": terminate, "signal": signal}
        return self.broadcast("revoke_by_stamped_headers", args, destination, **kwargs)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Collection[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        args = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", args, destination, **kwargs)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Collection[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        args = {"task_name": task_name, "soft": soft, "hard": hard}
        return self.broadcast("time_limit", args, destination, **kwargs)

    def pool_grow(
        self, n: int = 1, destination: Collection[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("pool_grow", {"n": n}, destination, **kwargs)

    def pool_shrink(
        self, n: int = 1, destination: Collection[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("pool_shrink", {"n": n}, destination, **kwargs)

    def pool_restart(
        self,
        modules: Iterable[str] | None = None,
        reload: bool = False,
        destination: Collection[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        args = {"modules": list(modules or ()), "reload": reload}
        return self.broadcast("pool_restart", args, destination, **kwargs)

    def autoscale(
        self, max: int, min: int, destination: Collection[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("autoscale", {"max": max, "min": min}, destination, **kwargs)

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        destination: Collection[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        args = {
            "queue": queue,
            "exchange": exchange,
            "exchange_type": exchange_type,
            "routing_key": routing_key,
        }
        return self.broadcast("add_consumer", args, destination, **kwargs)

    def cancel_consumer(
        self, queue: str, destination: Collection[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, **kwargs)

    def enable_events(
        self, destination: Collection[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("enable_events", {}, destination, **kwargs)

    def disable_events(
        self, destination: Collection[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("disable_events", {}, destination, **kwargs)

    def heartbeat(
        self, destination: Collection[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("heartbeat", {}, destination, **kwargs)

    def election(
        self, id: str, topic: str, action: Any = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        """Every worker elects one of them; the winner runs ``topic`` (``task``: sends the
        signature ``action``)."""
        args = {"id": id, "topic": topic, "action": action}
        return self.broadcast("election", args, **kwargs)

    def shutdown(
        self, destination: Collection[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        """Warm shutdown of the workers (they do not reply)."""
        return self.broadcast("shutdown", {}, destination, **kwargs)


class Inspect:
    """Read-only commands; each returns ``{node: reply}`` (None when nobody answered)."""

    def __init__(
        self,
        control: Control,
        destination: Collection[str] | None = None,
        timeout: float = 1.0,
        callback: Callable[[Reply], Any] | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> None:
        self.control = control
        self.destination = list(destination) if destination else None
        self.timeout = timeout
        self.callback = callback
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def __repr__(self) -> str:
        return f"<Inspect {self.destination or 'all'} timeout={self.timeout}>"

    async def arequest(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = await self.control.abroadcast(
            command,
            arguments,
            destination=self.destination,
            reply=True,
            timeout=self.timeout,
            limit=self.limit,
            callback=self.callback,
            pattern=self.pattern,
            matcher=self.matcher,
        )
        return _flatten(replies or [])

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        return portal.run(self.arequest(command, **arguments), _portal_timeout(self.timeout))

    def ping(self) -> dict[str, Any] | None:
        return self._request("ping")

    def clock(self) -> dict[str, Any] | None:
        return self._request("clock")

    def stats(self) -> dict[str, Any] | None:
        return self._request("stats")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("reserved", safe=safe)

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("scheduled", safe=safe)

    def revoked(self) -> dict[str, Any] | None:
        return self._request("revoked")

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        return self._request("registered", taskinfoitems=list(taskinfoitems) or None)

    registered_tasks = registered

    def query_task(self, *ids: str) -> dict[str, Any] | None:
        flat: list[str] = []
        for item in ids:
            flat.extend([item] if isinstance(item, str) else list(item))
        return self._request("query_task", ids=flat)

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request("conf", with_defaults=with_defaults)

    def report(self) -> dict[str, Any] | None:
        return self._request("report")

    def active_queues(self) -> dict[str, Any] | None:
        return self._request("active_queues")

    def memsample(self) -> dict[str, Any] | None:
        return self._request("memsample")

    def hello(self, from_node: str, revoked: Mapping[str, Any] | None = None) -> Any:
        return self._request("hello", from_node=from_node, revoked=dict(revoked or {}))


def _flatten(replies: list[dict[str, Any]]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for reply in replies:
        for node, value in reply.items():
            if node in out:
                warnings.warn(
                    f"Received multiple replies from node name: {node}. Please make sure you "
                    "give each node a unique nodename using the -n option.",
                    DuplicateNodenameWarning,
                    stacklevel=3,
                )
            out[node] = value
    return out or None


def _portal_timeout(timeout: float) -> float:
    # Collecting stops after ``timeout`` s without a reply; many replies can stretch it.
    return max(timeout, 0.1) * 10 + 30.0
