"""Remote-control commands: what a worker answers on its mailbox (spec section 5.4).

Every command is a function ``fun(panel, **arguments)`` registered in :data:`COMMANDS`
with its kind (``inspect``: no side effects; ``control``: changes the worker), the
positional arguments the CLI maps onto it, and its help line. Replies have Celery's
shapes, so ``celery inspect`` and ``celery control`` read ours and ``celeriac inspect``
reads Celery's. An unknown command raises ``KeyError(name)``, which the mailbox turns
into ``{"error": "KeyError('name')"}``, as Celery's workers answer.

Commands run on the worker's event loop, between messages, never in the pool: a worker
whose every pool slot is busy still answers (except the ``solo`` pool while it runs a
sync task, which holds the loop).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import platform
import signal as _signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from .. import __version__, states
from ..exceptions import TaskRevokedError
from ..messaging.mailbox import NO_REPLY
from ..utils.ratelimit import parse_rate
from ..utils.saferepr import saferepr

if TYPE_CHECKING:
    from ..messaging.entities import Queue
    from ..messaging.message import Message
    from .consumer.consumer import Consumer
    from .request import Request

__all__ = ["COMMANDS", "Command", "Panel", "request_info", "queue_as_dict", "command"]

logger = logging.getLogger("celeriac.worker.control")

Kind = Literal["inspect", "control"]


@dataclass(frozen=True, slots=True)
class Command:
    """One remote-control command and how the CLI calls it."""

    name: str
    fun: Callable[..., Any]
    kind: Kind
    #: Positional CLI arguments: ``(name, type)`` mapped onto keyword arguments in order.
    args: tuple[tuple[str, type], ...] = ()
    #: Keyword receiving every positional argument left over (a list), if any.
    variadic: str | None = None
    #: Other names the command answers to (Celery's ``dump_*`` aliases).
    aliases: tuple[str, ...] = ()
    help: str = ""
    #: Not listed by ``celeriac inspect --help`` (``hello`` is Mingle's).
    hidden: bool = False
    #: Arguments shown as a signature in help, e.g. ``"<task_id> [id...]"``.
    signature: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


#: Command name (and alias) -> Command.
COMMANDS: dict[str, Command] = {}


def command(
    kind: Kind,
    *,
    name: str | None = None,
    args: Iterable[tuple[str, type]] = (),
    variadic: str | None = None,
    aliases: Iterable[str] = (),
    hidden: bool = False,
    signature: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command; its help is the first line of the function's docstring."""

    def register(fun: Callable[..., Any]) -> Callable[..., Any]:
        cmd = Command(
            name or fun.__name__,
            fun,
            kind,
            tuple(args),
            variadic,
            tuple(aliases),
            (fun.__doc__ or "").strip().splitlines()[0].replace("``", "") if fun.__doc__ else "",
            hidden,
            signature,
        )
        for key in (cmd.name, *cmd.aliases):
            COMMANDS[key] = cmd
        return fun

    return register


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    return {"error": value}


# -- views of worker objects ------------------------------------------------------------


def request_info(request: Request, safe: bool = False, loop_now: float | None = None) -> dict:
    """Celery's request-info shape (spec section 5.6)."""
    tm = request.tm
    message = request.message
    info = message.delivery_info
    time_start = request.time_start
    if time_start is not None:
        # Requests stamp the loop clock; inspect replies carry wall-clock seconds.
        now = loop_now if loop_now is not None else request.consumer.loop.time()
        time_start = time.time() - (now - time_start)
    if safe:
        args: Any = tm.argsrepr if tm.argsrepr is not None else saferepr(tm.args, 1024)
        kwargs: Any = tm.kwargsrepr if tm.kwargsrepr is not None else saferepr(tm.kwargs, 1024)
    else:
        args, kwargs = tm.args, tm.kwargs
    return {
        "id": tm.id,
        "name": tm.shadow or tm.name,
        "args": args,
        "kwargs": kwargs,
        "type": tm.name,
        "hostname": request.consumer.hostname,
        "time_start": time_start,
        "acknowledged": request.acknowledged,
        "delivery_info": {
            "exchange": info.get("exchange"),
            "routing_key": info.get("routing_key"),
            "priority": message.properties.get("priority"),
            "redelivered": message.redelivered,
        },
        "worker_pid": request.worker_pid,
    }


def queue_as_dict(queue: Queue) -> dict[str, Any]:
    """kombu's ``Queue.as_dict(recurse=True)`` shape, for ``active_queues``."""
    ex = queue.effective_exchange
    arguments: dict[str, Any] = {}
    if queue.max_priority is not None:
        arguments["x-max-priority"] = queue.max_priority
    return {
        "name": queue.name,
        "exchange": {
            "name": ex.name,
            "type": ex.type,
            "arguments": dict(ex.arguments) if ex.arguments else None,
            "durable": ex.durable,
            "passive": False,
            "auto_delete": ex.auto_delete,
            "delivery_mode": None,
            "no_declare": False,
        },
        "routing_key": queue.effective_routing_key,
        "queue_arguments": arguments or None,
        "binding_arguments": None,
        "consumer_arguments": None,
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete,
        "no_ack": False,
        "alias": None,
        "bindings": [
            {"exchange": b.exchange, "routing_key": b.routing_key} for b in queue.bindings
        ],
        "no_declare": None,
        "expires": queue.expires,
        "message_ttl": queue.message_ttl,
        "max_length": None,
        "max_length_bytes": None,
        "max_priority": queue.max_priority,
    }


def broker_info(url: str, transport_options: dict[str, Any], connect_timeout: float) -> dict:
    """The ``stats.broker`` block (kombu's ``Connection.info()`` keys), password left out."""
    parts = urlsplit(url)
    scheme = parts.scheme
    vhost = unquote(parts.path.lstrip("/")) if scheme != "sqlite" else parts.path
    try:
        port = parts.port
    except ValueError:
        port = None
    return {
        "hostname": parts.hostname or ("localhost" if scheme != "memory" else parts.netloc),
        "userid": parts.username,
        "virtual_host": vhost or "/",
        "port": port,
        "insist": False,
        "ssl": scheme in ("rediss", "amqps"),
        "transport": scheme,
        "connect_timeout": connect_timeout,
        "transport_options": {
            k: v for k, v in transport_options.items() if "password" not in k.lower()
        },
        "login_method": None,
        "uri_prefix": None,
        "heartbeat": 120.0,
        "failover_strategy": "round-robin",
        "alternates": [],
    }


def _rusage() -> dict[str, Any] | str:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return "N/A"
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        name: getattr(r, f"ru_{name}")
        for name in (
            "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt",
            "nswap", "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw",
        )
    }  # fmt: skip


def _signum(value: Any) -> int | None:
    """``"SIGTERM"``, ``"TERM"``, ``15`` -> 15; None stays None (the pool's default)."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    text = str(value).upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(getattr(_signal, text))
    except AttributeError:
        raise ValueError(f"unknown signal {value!r}") from None


def _ids(task_id: Any) -> list[str]:
    if task_id is None:
        return []
    if isinstance(task_id, str):
        return [task_id]
    return [str(t) for t in task_id]


def _set_repr(ids: Iterable[str]) -> str:
    return repr(set(ids)) if ids else "set()"


# -- the panel --------------------------------------------------------------------------


class Panel:
    """What commands act on: the consumer, and through it the worker, pool and state.

    Args:
        consumer: The worker's consumer.
    """

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.worker = consumer.worker
        self.app = consumer.app
        self.hostname = consumer.hostname
        self.state = consumer.state
        #: Task ids terminated by ``revoke(terminate=True)`` and the signal used.
        self.terminated: dict[str, int | None] = {}

    def __repr__(self) -> str:
        return f"<Panel {self.hostname}>"

    @property
    def clock(self) -> Any:
        return self.worker.clock

    def handle(self, method: str, arguments: dict[str, Any], message: Message) -> Any:
        """The mailbox handler: run ``method`` with ``arguments``.

        Raises:
            KeyError: no such command (the reply is Celery's ``KeyError('name')``).
        """
        cmd = COMMANDS.get(method)
        if cmd is None:
            raise KeyError(method)
        return cmd.fun(self, **arguments)

    # -- shared by several commands ----------------------------------------------------

    def reserved_requests(self) -> list[Request]:
        """Received, not started, not held for an ETA."""
        held = self.consumer.held
        active = self.state.active
        items = list(self.state.reserved.items())
        return [r for tid, r in items if tid not in held and tid not in active]

    def revoke_ids(self, ids: list[str], terminate: bool, signum: int | None) -> list[str]:
        """Remember ``ids`` as revoked, drop those waiting here, terminate running ones
        (``terminate``); returns the ids terminated."""
        revoked = self.state.revoked
        for task_id in ids:
            revoked.add(task_id)
        self._drop_waiting(set(ids))
        terminated: list[str] = []
        if terminate:
            for task_id in ids:
                request = self.state.active.get(task_id)
                if request is not None and self.terminate(request, signum):
                    terminated.append(task_id)
        statedb = getattr(self.worker, "statedb", None)
        if statedb is not None:
            statedb.save_soon()
        return terminated

    def _drop_waiting(self, ids: set[str]) -> None:
        """Revoked requests not started yet: out of the ETA holds, rate-limit queues and
        the pool's pending jobs, stored REVOKED at once."""
        c = self.consumer
        for task_id in ids & c.held.keys():
            handle, request = c.held.pop(task_id)
            handle.cancel()
            if c.task_consumer is not None:
                c.task_consumer.prefetch_count -= 1
            c.on_request_done(request)
            request.revoked("revoked")
        for limiter in c.rate_limiters.values():
            hit = [r for r in limiter.waiting if r.id in ids]
            for request in hit:
                limiter.waiting.remove(request)
                request.revoked("revoked")
        reserved = self.state.reserved
        if not any(t in reserved and t not in self.state.active for t in ids):
            return
        # Take every unstarted job back, keep the order, hand back all but the revoked.
        pool = c.pool
        taken = pool.take_pending()
        for job in taken:
            request = reserved.get(job.id)
            if request is None:
                logger.error("control: pending job %s has no request; cannot resubmit", job.id)
                continue
            if job.id in ids:
                request.revoked("revoked")
            else:
                request.execute_using_pool()

    def terminate(self, request: Request, signum: int | None) -> bool:
        """Stop a running request through the pool; records REVOKED and ``task-revoked``."""
        if not self.consumer.pool.terminate_job(request.id, signum):
            return False
        c = self.consumer
        self.terminated[request.id] = signum
        if len(self.terminated) > 1000:
            self.terminated.pop(next(iter(self.terminated)))
        logger.warning("Terminating %s[%s] (signal %s)", request.name, request.id, signum)
        if c.task_events is not None:
            c.task_events.send(
                "task-revoked",
                uuid=request.id,
                terminated=True,
                signum=signum if signum is not None else int(_signal.SIGTERM),
                expired=False,
            )
        if not request.ignore_result or request.task.store_errors_even_if_ignored:
            c.store_result(request, states.REVOKED, TaskRevokedError("terminated"))
        return True

    def set_pool_size(self, delta: int) -> None:
        """Grow (``delta > 0``) or shrink the pool and move the prefetch limit with it."""
        pool = self.consumer.pool
        before = pool.limit
        if delta > 0:
            pool.grow(delta)
        elif delta < 0:
            pool.shrink(-delta)
        self.update_prefetch(pool.limit - before)

    def update_prefetch(self, slots: int) -> None:
        c = self.consumer
        multiplier = c.app.conf.worker_prefetch_multiplier
        if c.task_consumer is not None and multiplier and slots:
            c.task_consumer.prefetch_count = max(
                1, c.task_consumer.prefetch_count + slots * int(multiplier)
            )


# -- inspect commands -------------------------------------------------------------------


@command("inspect")
def ping(panel: Panel, **_: Any) -> dict[str, Any]:
    """Ping workers; each live one answers pong."""
    return ok("pong")


@command("inspect")
def clock(panel: Panel, **_: Any) -> dict[str, Any]:
    """The workers' Lamport clock values."""
    return {"clock": panel.clock.value}


@command("inspect")
def stats(panel: Panel, **_: Any) -> dict[str, Any]:
    """Statistics: pool, broker, prefetch, totals, rusage."""
    c = panel.consumer
    w = panel.worker
    pool = c.pool
    info = pool.info()
    info.setdefault("put-guarded-by-semaphore", False)
    conf = panel.app.conf
    info.setdefault("timeouts", [conf.task_soft_time_limit or 0, conf.task_time_limit or 0])
    info.setdefault("writes", "N/A")
    conn = c.connection
    reply: dict[str, Any] = {
        "total": dict(panel.state.total_count),
        "pid": os.getpid(),
        "clock": str(panel.clock.value),
        "uptime": int(time.monotonic() - w.started_at),
        "pool": info,
        "broker": broker_info(
            conn.url if conn is not None else str(conf.broker_url),
            dict(conn.transport_options) if conn is not None else {},
            conn.connect_timeout if conn is not None else 4.0,
        ),
        "prefetch_count": c.task_consumer.prefetch_count if c.task_consumer else c.prefetch_count,
        "rusage": _rusage(),
    }
    autoscaler = getattr(w, "autoscaler", None)
    if autoscaler is not None:
        reply["autoscaler"] = autoscaler.info()
    return reply


@command("inspect", aliases=("dump_active",))
def active(panel: Panel, safe: bool | None = None, **_: Any) -> list[dict[str, Any]]:
    """Tasks being executed."""
    now = panel.consumer.loop.time()
    return [request_info(r, bool(safe), now) for r in list(panel.state.active.values())]


@command("inspect", aliases=("dump_reserved",))
def reserved(panel: Panel, safe: bool | None = None, **_: Any) -> list[dict[str, Any]]:
    """Tasks received and waiting for a pool slot (prefetched)."""
    return [request_info(r, bool(safe)) for r in panel.reserved_requests()]


@command("inspect", aliases=("dump_schedule",))
def scheduled(panel: Panel, safe: bool | None = None, **_: Any) -> list[dict[str, Any]]:
    """Tasks held for their ETA (countdown)."""
    out = []
    for _handle, request in list(panel.consumer.held.values()):
        eta = request.eta
        out.append(
            {
                "eta": eta.isoformat() if eta is not None else None,
                "priority": 6,
                "request": request_info(request, bool(safe)),
            }
        )
    return out


@command("inspect", aliases=("dump_revoked",))
def revoked(panel: Panel, **_: Any) -> list[str]:
    """Ids of revoked tasks this worker remembers."""
    return list(panel.state.revoked)


DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")


@command("inspect", aliases=("dump_tasks",), variadic="taskinfoitems", signature="[attr...]")
def registered(
    panel: Panel, taskinfoitems: list[str] | None = None, builtin: bool = False, **_: Any
) -> list[str]:
    """Names of the tasks this worker knows, with attributes if asked for."""
    tasks = panel.app.tasks
    names = sorted(n for n in tasks if builtin or not n.startswith("celery."))
    items = taskinfoitems or DEFAULT_TASK_INFO_ITEMS
    out = []
    for name in names:
        task = tasks[name]
        fields = []
        for attr in items:
            value = getattr(task, attr, None)
            if value is not None:
                fields.append(f"{attr}={value}")
        out.append(f"{name} [{' '.join(fields)}]" if fields else name)
    return out


@command("inspect", variadic="ids", signature="<task_id> [id...]")
def query_task(panel: Panel, ids: Any = None, **_: Any) -> dict[str, Any]:
    """State of tasks by id: active, reserved or scheduled here."""
    wanted = _ids(ids)
    flat: list[str] = []
    for item in wanted:  # celery sends [[id, ...]] for variadic ids
        flat.extend(_ids(item) if isinstance(item, list) else [item])
    found: dict[str, Any] = {}
    state = panel.state
    held = panel.consumer.held
    for task_id in flat:
        if task_id in state.active:
            found[task_id] = ["active", request_info(state.active[task_id])]
        elif task_id in held:
            found[task_id] = ["scheduled", request_info(held[task_id][1])]
        elif task_id in state.reserved:
            found[task_id] = ["reserved", request_info(state.reserved[task_id])]
    return found


@command("inspect", aliases=("dump_conf",), args=(("with_defaults", bool),))
def conf(panel: Panel, with_defaults: bool = False, **_: Any) -> dict[str, Any]:
    """The worker's configuration (secrets masked)."""
    table = panel.app.conf.table(with_defaults=bool(with_defaults), mask=True)
    return {k: _jsonable(v) for k, v in table.items()}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return repr(value)


@command("inspect")
def report(panel: Panel, **_: Any) -> dict[str, Any]:
    """A bug-report summary: versions, platform, broker, pool."""
    w = panel.worker
    conf = panel.app.conf
    from ..messaging.transports.base import mask_url

    text = "\n".join(
        [
            f"software -> celeriac:{__version__} py:{platform.python_version()}",
            f"            platform -> system:{platform.system()} arch:{platform.machine()}",
            f"            loader -> {type(panel.app).__module__}",
            f"settings -> transport:{mask_url(str(conf.broker_url))} "
            f"results:{mask_url(str(conf.result_backend or 'disabled'))}",
            f"pool -> {w.pool_name} concurrency:{w.pool.limit}",
            f"hostname -> {panel.hostname} pid:{os.getpid()}",
        ]
    )
    return ok(text)


@command("inspect")
def active_queues(panel: Panel, **_: Any) -> list[dict[str, Any]]:
    """Queues this worker consumes from."""
    c = panel.consumer
    queues = c.task_consumer.queues if c.task_consumer is not None else c.queues
    return [queue_as_dict(q) for q in queues]


@command("inspect", hidden=True)
def hello(
    panel: Panel, from_node: str | None = None, revoked: dict[str, Any] | None = None, **_: Any
) -> dict[str, Any] | None:
    """Mingle: merge a starting node's revoked ids, answer with ours and our clock."""
    if from_node == panel.hostname:
        return None
    logger.info("sync with %s", from_node)
    state = panel.state
    if revoked:
        try:
            state.revoked.update(revoked)
        except (ValueError, TypeError) as exc:
            logger.warning("hello from %s: bad revoked ids: %s", from_node, exc)
    state.revoked.purge()
    return {"revoked": state.revoked.as_dict(pairs=True), "clock": panel.clock.forward()}


@command("inspect")
def memsample(panel: Panel, **_: Any) -> str:
    """Resident memory of the worker process now."""
    rusage = _rusage()
    if isinstance(rusage, dict):
        return f"{rusage['maxrss'] / 1024:.1f}MiB max RSS"
    return "N/A"


# -- control commands -------------------------------------------------------------------


@command(
    "control",
    args=(("task_id", str),),
    variadic="task_id",
    signature="<task_id> [id...]",
)
async def revoke(
    panel: Panel, task_id: Any = None, terminate: bool = False, signal: Any = None, **_: Any
) -> dict[str, Any]:
    """Revoke tasks by id (``terminate=True`` also stops running ones)."""
    ids = _ids(task_id)
    signum = _signum(signal)
    terminated = panel.revoke_ids(ids, bool(terminate), signum)
    if terminate:
        if terminated:
            return ok(f"terminate: {', '.join(terminated)}")
        return ok("terminate: tasks unknown")
    logger.info("Tasks flagged as revoked: %s", ", ".join(ids))
    return ok(f"tasks {_set_repr(ids)} flagged as revoked")


@command("control", args=(("signal", str), ("task_id", str)), variadic="task_id")
async def terminate(
    panel: Panel, signal: Any = None, task_id: Any = None, **_: Any
) -> dict[str, Any]:
    """Terminate running tasks by id with a signal (revoke with terminate=True)."""
    result: dict[str, Any] = await revoke(panel, task_id=task_id, terminate=True, signal=signal)
    return result


@command("control", variadic="headers", signature="<header=value> [header=value...]")
def revoke_by_stamped_headers(
    panel: Panel,
    headers: Any = None,
    terminate: bool = False,
    signal: Any = None,
    **_: Any,
) -> dict[str, Any]:
    """Revoke the tasks here whose stamped headers match (``stamp: value(s)``)."""
    wanted = _stamp_map(headers)
    if not wanted:
        return nok("no headers given")
    signum = _signum(signal)
    state = panel.state
    state.revoke_stamps(wanted)  # messages yet to come are dropped too
    held = [*state.active.values(), *state.reserved.values(), *state.scheduled.values()]
    hits = [r for r in held if state.stamp_revoked(r.tm.headers)]
    ids = list(dict.fromkeys(r.id for r in hits))
    terminated = panel.revoke_ids(ids, bool(terminate), signum)
    shown = {k: sorted(v) for k, v in wanted.items()}
    if terminate and terminated:
        return ok(f"headers {shown} revoked and terminated: {', '.join(terminated)}")
    return ok(f"headers {shown} flagged as revoked, but not terminated")


def _stamp_map(headers: Any) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    if isinstance(headers, dict):
        items: Iterable[tuple[str, Any]] = headers.items()
    else:  # CLI form: ["stamp=value", ...]
        items = [tuple(str(h).split("=", 1)) for h in headers or () if "=" in str(h)]  # type: ignore[misc]
    for key, value in items:
        values = value if isinstance(value, list | tuple | set) else [value]
        out.setdefault(str(key), set()).update(str(v) for v in values)
    return out


@command("control", args=(("task_name", str), ("rate_limit", str)))
def rate_limit(
    panel: Panel, task_name: str | None = None, rate_limit: Any = None, **_: Any
) -> dict[str, Any]:
    """Set a task type's rate limit (``10/m``; 0 or none disables it)."""
    try:
        rate = parse_rate(rate_limit)
    except (ValueError, TypeError) as exc:
        return nok(f"Invalid rate limit string: {exc!r}")
    tasks = panel.app.tasks
    if task_name not in tasks:
        logger.error("rate limit attempt for unknown task %s", task_name)
        return nok("unknown task")
    task = tasks[task_name]
    task.rate_limit = rate_limit if rate else None
    c = panel.consumer
    from .strategy import default_strategy

    old = c.rate_limiters.pop(task_name, None)
    c.strategies[task_name] = default_strategy(task, c)
    if old is not None:  # requests waiting for a token: the new limiter (or none) decides
        limiter = c.rate_limiters.get(task_name)
        for request in old.take_all():
            if limiter is not None:
                limiter.submit(request)
            else:
                c.dispatch(request)
    if not rate:
        return ok("rate limit disabled successfully")
    return ok("new rate limit set successfully")


@command("control", args=(("task_name", str), ("soft", float), ("hard", float)))
def time_limit(
    panel: Panel,
    task_name: str | None = None,
    hard: float | None = None,
    soft: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Set a task type's soft and hard time limits (s) for executions from now on."""
    tasks = panel.app.tasks
    if task_name not in tasks:
        logger.error("change time limit attempt for unknown task %s", task_name)
        return nok("unknown task")
    task = tasks[task_name]
    task._from_conf["soft_time_limit"] = soft
    task._from_conf["time_limit"] = hard
    logger.info("New time limits for tasks of type %s: soft=%s hard=%s", task_name, soft, hard)
    return ok("time limits set successfully")


@command("control", args=(("n", int),))
def pool_grow(panel: Panel, n: int = 1, **_: Any) -> dict[str, Any]:
    """Add ``n`` pool slots."""
    autoscaler = getattr(panel.worker, "autoscaler", None)
    if autoscaler is not None:
        autoscaler.force_scale_up(int(n))
    else:
        panel.set_pool_size(int(n))
    return ok("pool will grow")


@command("control", args=(("n", int),))
def pool_shrink(panel: Panel, n: int = 1, **_: Any) -> dict[str, Any]:
    """Remove ``n`` pool slots."""
    autoscaler = getattr(panel.worker, "autoscaler", None)
    if autoscaler is not None:
        autoscaler.force_scale_down(int(n))
    else:
        panel.set_pool_size(-int(n))
    return ok("pool will shrink")


@command("control", variadic="modules", signature="[module...]")
def pool_restart(
    panel: Panel,
    modules: list[str] | None = None,
    reload: bool = False,
    reloader: Any = None,
    **_: Any,
) -> dict[str, Any]:
    """Restart the pool's processes (``worker_pool_restarts``), reloading modules."""
    if not panel.app.conf.worker_pool_restarts:
        raise ValueError("Pool restarts not enabled")
    for name in modules or ():
        if name in sys.modules and reload:
            importlib.reload(sys.modules[name])
        elif name not in sys.modules:
            importlib.import_module(name)
    panel.consumer.pool.restart()
    panel.consumer.update_strategies()
    return ok("reload started")


@command("control", args=(("max", int), ("min", int)))
def autoscale(panel: Panel, max: int | None = None, min: int | None = None, **_: Any) -> dict:
    """Change the autoscaler's bounds."""
    autoscaler = getattr(panel.worker, "autoscaler", None)
    if autoscaler is None:
        raise ValueError("Autoscale not enabled")
    max_, min_ = autoscaler.update(max, min)
    return ok(f"autoscale now max={max_} min={min_}")


@command(
    "control",
    args=(("queue", str), ("exchange", str), ("exchange_type", str), ("routing_key", str)),
)
async def add_consumer(
    panel: Panel,
    queue: str | None = None,
    exchange: str | None = None,
    exchange_type: str | None = None,
    routing_key: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Start consuming from a queue."""
    from ..messaging.entities import Exchange, Queue
    from ..routing import queues_from_conf

    if not queue:
        return nok("a queue name is required")
    c = panel.consumer
    consumer = c.task_consumer
    if consumer is None:
        return nok("not consuming yet")
    if any(q.name == queue for q in consumer.queues):
        return ok(f"already consuming from {queue!r}")
    known = queues_from_conf(panel.app).get(queue)
    if known is not None and exchange is None:
        q = known
    else:
        ex = Exchange(exchange or queue, exchange_type or "direct")  # type: ignore[arg-type]
        q = Queue(queue, ex, routing_key or queue)
    await consumer.add_queue(q)
    logger.info("Started consuming from %s", queue)
    return ok(f"add consumer {queue}")


@command("control", args=(("queue", str),))
def cancel_consumer(panel: Panel, queue: str | None = None, **_: Any) -> dict[str, Any]:
    """Stop consuming from a queue."""
    consumer = panel.consumer.task_consumer
    if consumer is None or not queue:
        return nok("not consuming from it")
    consumer.cancel_queue(queue)
    logger.info("Cancelled consuming from %s", queue)
    return ok(f"no longer consuming from {queue}")


@command("control")
def enable_events(panel: Panel, **_: Any) -> dict[str, Any]:
    """Start sending task events."""
    c = panel.consumer
    dispatcher = c.event_dispatcher
    if dispatcher is None:
        return nok("events are not available")
    if c.task_events is not None:
        return ok("task events already enabled")
    if dispatcher.groups is not None:
        dispatcher.groups = dispatcher.groups | {"task"}
    c.task_events = dispatcher
    logger.info("Events of group {task} enabled by remote.")
    return ok("task events enabled")


@command("control")
def disable_events(panel: Panel, **_: Any) -> dict[str, Any]:
    """Stop sending task events."""
    c = panel.consumer
    dispatcher = c.event_dispatcher
    if dispatcher is None or c.task_events is None:
        return ok("task events already disabled")
    dispatcher.groups = (dispatcher.groups or frozenset({"worker"})) - {"task"}
    c.task_events = None
    logger.info("Events of group {task} disabled by remote.")
    return ok("task events disabled")


@command("control")
def heartbeat(panel: Panel, **_: Any) -> None:
    """Send a worker-heartbeat event now."""
    from .consumer.events import SW_IDENT, SW_SYS

    dispatcher = panel.consumer.event_dispatcher
    if dispatcher is not None:
        dispatcher.send(
            "worker-heartbeat", freq=5, sw_ident=SW_IDENT, sw_ver=__version__, sw_sys=SW_SYS
        )
    return None


@command("control", args=(("id", str), ("topic", str), ("action", str)))
def election(
    panel: Panel, id: str | None = None, topic: str | None = None, action: Any = None, **_: Any
) -> None:
    """Take part in an election among the workers (gossip)."""
    gossip = getattr(panel.consumer, "gossip", None)
    if gossip is None:
        raise ValueError("gossip is disabled on this worker")
    gossip.election(id, topic, action)
    return None


@command("control", args=(("msg", str),))
def shutdown(panel: Panel, msg: str = "Got shutdown from remote", **_: Any) -> Any:
    """Warm shutdown (no reply)."""
    logger.warning("%s", msg)
    asyncio.get_running_loop().call_soon(panel.worker.stop)
    return NO_REPLY
