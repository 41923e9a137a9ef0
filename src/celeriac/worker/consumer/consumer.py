"""The worker's Consumer: receives task messages and does the main-loop side of each request.

It is assembled from bootsteps (the ``consumer`` blueprint: Connection, Tasks, Evloop, and
user steps from ``app.steps['consumer']``). When the broker connection is lost, the whole
blueprint is stopped and started again, so every step re-attaches to the new connection
and consuming resumes by itself.

Everything requests produce on the main loop (result writes, retry and callback messages)
goes through coalescing writers: one backend call and one publish per loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ... import states
from ...backends.meta import make_meta
from ...canvas import Signature
from ...exceptions import (
    BrokerConnectionError,
    ConnectionBrokenError,
    ContentDisallowed,
    DecodeError,
    NotRegistered,
    Retry,
)
from ...messaging.entities import Exchange, Queue
from ...messaging.transports.base import QUARANTINE_QUEUE, Outgoing
from ...protocol import decode_task_message
from ...serialization import accepted_content_types
from ..batching import CoalescingWriter
from ..bootsteps import Blueprint
from ..strategy import Strategy, default_strategy

if TYPE_CHECKING:
    from ...events.dispatcher import EventDispatcher
    from ...messaging.connection import Connection
    from ...messaging.consumer import Consumer as MessageConsumer
    from ...messaging.message import Message
    from ..request import Request
    from ..strategy import RateLimiter
    from ..worker import WorkController
    from .gossip import Gossip

__all__ = ["Consumer", "ConsumerBlueprint"]

logger = logging.getLogger("celeriac.worker.consumer")

#: Pause (s) before the consumer blueprint is started again after a connection loss.
RESTART_PAUSE_MAX = 5.0


class ConsumerBlueprint(Blueprint):
    name = "consumer"
    default_steps = {
        "celeriac.worker.consumer.steps:Connection",
        "celeriac.worker.consumer.mingle:Mingle",
        "celeriac.worker.consumer.events:Events",
        "celeriac.worker.consumer.gossip:Gossip",
        "celeriac.worker.consumer.events:Heart",
        "celeriac.worker.consumer.control:Control",
        "celeriac.worker.consumer.steps:Tasks",
        "celeriac.worker.consumer.steps:Evloop",
    }


class Consumer:
    """Consumes task messages for one worker; see module docstring."""

    #: The worker's event dispatcher (set by the Events step).
    event_dispatcher: EventDispatcher | None = None
    #: The dispatcher when task events are on (``-E``), else None: the hot path checks
    #: this one attribute before building any task event.
    task_events: EventDispatcher | None = None
    #: The Gossip step while it runs (peers, elections); None with ``--without-gossip``.
    gossip: Gossip | None = None

    def __init__(self, worker: WorkController) -> None:
        self.worker = worker
        self.app = worker.app
        self.hostname = worker.hostname
        self.pool = worker.pool
        self.state = worker.state
        self.loop = asyncio.get_running_loop()
        conf = self.app.conf
        self.accept = tuple(conf.accept_content)
        # A misspelled accept_content fails here, at start, not on every message.
        accepted_content_types(self.accept)
        self.queues: list[Queue] = worker.queues
        self.connection: Connection | None = None
        self.task_consumer: MessageConsumer | None = None
        self.consume_task: asyncio.Task[None] | None = None
        self.strategies: dict[str, Strategy] = {}
        self.rate_limiters: dict[str, RateLimiter] = {}
        self.held: dict[str, tuple[asyncio.TimerHandle, Request]] = {}
        self.info_enabled = logging.getLogger("celeriac.worker.request").isEnabledFor(logging.INFO)
        self.result_extended = bool(conf.result_extended)
        self.results: CoalescingWriter[tuple[str, dict[str, Any]]] = CoalescingWriter(
            "results", self._write_results
        )
        self.outbox: CoalescingWriter[Outgoing] = CoalescingWriter("publish", self._publish)
        self.blueprint = ConsumerBlueprint(name="consumer")
        self.blueprint.apply(self)
        self._stop_requested = asyncio.Event()
        self.restarts = 0
        #: Requests finished since start (the prefetch burst follows their rate).
        self.completed = 0
        #: True while the Connection step connects (its failures end the worker).
        self.connecting = False
        #: True once a cold shutdown began: killed acks_late executions are requeued.
        self.terminating = False

    def __repr__(self) -> str:
        return f"<Consumer {self.hostname} queues={[q.name for q in self.queues]}>"

    @property
    def prefetch_count(self) -> int:
        conf = self.app.conf
        multiplier = conf.worker_prefetch_multiplier
        if not multiplier:
            return 10_000
        return max(1, int(multiplier) * self.pool.limit)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the blueprint until stopped; restart it whenever the connection is lost."""
        pause = 0.1
        while not self._stop_requested.is_set():
            try:
                await self.blueprint.start(self)
                return
            except (ConnectionBrokenError, BrokerConnectionError) as exc:
                if self._stop_requested.is_set():
                    return
                if self.connecting:
                    # Connecting failed past broker_connection_max_retries: give up loudly.
                    raise
                self.restarts += 1
                logger.error(
                    "consumer: connection to broker lost (%s); restarting in %.1fs", exc, pause
                )
                await self.blueprint.stop(self, close=False)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RESTART_PAUSE_MAX)

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        await self._stop_requested.wait()

    async def stop_consuming(self) -> None:
        """Stop fetching and give every not-yet-started message back to the broker at once."""
        if self.task_consumer is not None:
            self.task_consumer.stop()
        returned = 0
        for job in self.pool.take_pending():
            request = self.state.reserved.get(job.id)
            if request is not None:
                self.state.reserved.pop(job.id, None)
                request.reject(requeue=True)
                returned += 1
        for handle, request in list(self.held.values()):
            handle.cancel()
            self.state.reserved.pop(request.id, None)
            request.reject(requeue=True)
            returned += 1
        self.held.clear()
        for limiter in self.rate_limiters.values():
            for request in limiter.take_all():
                self.state.reserved.pop(request.id, None)
                request.reject(requeue=True)
                returned += 1
        if returned:
            logger.info("returned %d unstarted message(s) to the broker", returned)
        if self.task_consumer is not None:
            await self.task_consumer.flush()

    async def drain_writes(self) -> None:
        await self.outbox.flush()
        await self.results.flush()
        if self.task_consumer is not None:
            await self.task_consumer.flush()

    async def shutdown(self, warm: bool = True) -> None:
        """Warm: stop consuming, let running tasks finish, settle everything, disconnect.

        Cold: kill running executions, return every unsettled message, disconnect.
        """
        self.request_stop()
        self.terminating = not warm
        await self.stop_consuming()
        if warm:
            await self.pool.stop()
        else:
            await self.pool.terminate()
        await self.drain_writes()
        if self.task_consumer is not None:
            await self.task_consumer.close(requeue_unsettled=True)
        await self.blueprint.stop(self, close=True, terminate=not warm)

    # -- receiving --------------------------------------------------------------------------

    def update_strategies(self) -> None:
        self.strategies = {
            name: default_strategy(task, self) for name, task in self.app.tasks.items()
        }

    def on_task_received(self, message: Message) -> None:
        """Every task message starts here: find its task's strategy, or refuse it clearly."""
        name = message.headers.get("task")
        if name is None:
            self._on_headerless(message)
            return
        strategy = self.strategies.get(name)
        if strategy is None:
            self.on_unknown_task(message, name)
            return
        try:
            strategy(message)
        except Exception as exc:
            logger.exception("Error handling task message %r: %r", message, exc)
            self.quarantine(message, f"internal error: {exc!r}")

    def _on_headerless(self, message: Message) -> None:
        """Protocol v1 (everything in the body): decode it to find the task name."""
        try:
            tm = decode_task_message(message, self.accept)
        except DecodeError as exc:
            self.on_invalid_message(message, exc)
            return
        strategy = self.strategies.get(tm.name)
        if strategy is None:
            self.on_unknown_task(message, tm.name)
            return
        message.headers = {**tm.headers, "task": tm.name, "id": tm.id}
        strategy(message)

    def on_unknown_task(self, message: Message, name: str) -> None:
        task_id = message.headers.get("id")
        logger.error(
            "Received unregistered task of type %r (id %s): quarantined in %r. "
            "Is the task module imported by this worker (-A, include, imports)?",
            name,
            task_id,
            QUARANTINE_QUEUE,
        )
        if task_id:
            exc = NotRegistered(name)
            meta = make_meta(task_id, states.FAILURE, exc)
            self.results.add((task_id, meta))
            if self.task_events is not None:
                self.task_events.send("task-failed", uuid=task_id, exception=repr(exc))
        self.quarantine(message, f"unregistered task {name!r}")

    def on_invalid_message(self, message: Message, exc: DecodeError) -> None:
        kind = (
            "content type not accepted" if isinstance(exc, ContentDisallowed) else "cannot decode"
        )
        logger.error(
            "Refused task message %s (%s: %s; content-type %r, %d bytes): quarantined in %r",
            message.headers.get("id") or message.delivery_tag,
            kind,
            exc,
            message.content_type,
            len(message.body),
            QUARANTINE_QUEUE,
        )
        task_id = message.headers.get("id")
        if isinstance(task_id, str) and task_id:
            # The sender waits on this id: tell it why, rather than leave it PENDING.
            self.results.add((task_id, make_meta(task_id, states.FAILURE, exc)))
        self.quarantine(message, f"{kind}: {exc}")

    def quarantine(self, message: Message, reason: str) -> None:
        """Keep a message we cannot run (original bytes + reason), then ack the original."""
        copy = message.copy_for_publish(
            {"x-quarantine-reason": reason, "x-original-queue": message.delivery_info.get("queue")}
        )
        self.outbox.add(Outgoing(copy, "", QUARANTINE_QUEUE), after=message.ack)

    # -- running ----------------------------------------------------------------------------

    def dispatch(self, request: Request) -> None:
        request.execute_using_pool()

    def hold_until(self, request: Request, when: float, then: Callable[[Request], None]) -> None:
        """Keep a request until ``when`` (epoch s). Its message stays claimed (lease kept)."""
        delay = max(0.0, when - time.time())
        if self.task_consumer is not None:
            self.task_consumer.prefetch_count += 1

        def release() -> None:
            self.held.pop(request.id, None)
            if self.task_consumer is not None:
                self.task_consumer.prefetch_count -= 1
            state = self.state
            if request.id in state.revoked or (
                state.revoked_stamps and state.stamp_revoked(request.tm.headers)
            ):
                request.revoked("revoked")
            elif request.is_expired():
                request.revoked("expired")
            else:
                then(request)

        handle = self.loop.call_later(delay, release)
        self.held[request.id] = (handle, request)
        self.state.scheduled[request.id] = request

    def on_request_done(self, request: Request) -> None:
        self.state.scheduled.pop(request.id, None)
        self.completed += 1

    # -- effects, coalesced -----------------------------------------------------------------

    def store_result(
        self,
        request: Request,
        state: str,
        result: Any,
        traceback: str | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        tm = request.tm
        extended = None
        if self.result_extended:
            extended = {
                "name": tm.name,
                "args": tm.args,
                "kwargs": tm.kwargs,
                "worker": self.hostname,
                "retries": tm.retries,
                "queue": request.message.delivery_info.get("routing_key"),
            }
        meta = make_meta(
            tm.id,
            state,
            result,
            traceback,
            group_id=tm.group_id,
            parent_id=tm.parent_id,
            extended=extended,
        )
        self.results.add((tm.id, meta), after)

    async def _write_results(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        backend = await self.app.get_backend()
        await backend.store_many(items)

    async def _publish(self, batch: list[Outgoing]) -> None:
        assert self.connection is not None
        if any(o.routing_key == QUARANTINE_QUEUE for o in batch):
            await self.connection.declare(Queue(QUARANTINE_QUEUE, Exchange("")))
        await self.connection.retrying(lambda transport: transport.publish(batch))

    def send_retry(self, request: Request, retry: Retry, after: Callable[[], None]) -> None:
        """Publish the next attempt: same id, retries + 1, ETA from the retry's countdown."""
        tm = request.tm
        sig = retry.sig or {}
        options = dict(sig.get("options") or {})
        when = retry.when
        timing: dict[str, Any] = {}
        if isinstance(when, int | float):
            timing["countdown"] = when
        elif when is not None:
            timing["eta"] = when
        outgoing, _route, _ = self.app.build_outgoing(
            tm.name,
            sig.get("args", tm.args),
            sig.get("kwargs", tm.kwargs),
            task_id=tm.id,
            retries=tm.retries + 1,
            root_id=tm.root_id,
            parent_id=tm.id,
            origin=tm.origin,
            expires=tm.expires,
            time_limit=tm.time_limit,
            soft_time_limit=tm.soft_time_limit,
            group_id=tm.group_id,
            group_index=tm.group_index,
            link=tm.callbacks,
            link_error=tm.errbacks,
            chain=tm.chain,
            chord=tm.chord,
            shadow=tm.shadow,
            queue=options.pop("queue", None) or request.message.delivery_info.get("queue"),
            priority=options.pop("priority", None) or request.message.properties.get("priority"),
            **{k: v for k, v in options.items() if k in ("serializer", "compression", "headers")},
            **timing,
        )
        self.outbox.add(outgoing, after=after)

    def send_callbacks(self, request: Request, retval: Any) -> None:
        """``link`` callbacks get the return value prepended; the chain's next step too."""
        tm = request.tm
        for data in tm.callbacks or ():
            self._send_signature(Signature.from_dict(data), (retval,), tm)
        if tm.chain:
            rest = list(tm.chain)
            nxt = Signature.from_dict(rest.pop())
            self._send_signature(nxt, (retval,), tm, chain=rest or None)

    def send_errbacks(self, request: Request) -> None:
        """``link_error`` callbacks are sent with the failed task's id (Celery's old style)."""
        tm = request.tm
        for data in tm.errbacks or ():
            self._send_signature(Signature.from_dict(data), (tm.id,), tm)

    def _send_signature(
        self, sig: Signature, args: tuple[Any, ...], tm: Any, chain: list[Any] | None = None
    ) -> None:
        sig = sig.clone(args)
        options = {k: v for k, v in sig.options.items() if k not in ("reply_to",)}
        options.setdefault("parent_id", tm.id)
        options.setdefault("root_id", tm.root_id)
        if chain is not None:
            options["chain"] = chain
        try:
            outgoing, _route, _ = self.app.build_outgoing(sig.task, sig.args, sig.kwargs, **options)
        except Exception as exc:
            logger.error("Task %s[%s]: cannot send callback %r: %r", tm.name, tm.id, sig, exc)
            return
        self.outbox.add(outgoing)
