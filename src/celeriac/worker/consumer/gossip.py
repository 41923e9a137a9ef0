"""The consumer's Gossip step: the worker's view of its peers (spec section 6.2).

Gossip listens to the ``worker.#`` events of the cluster (on Redis: ``PSUBSCRIBE
/<db>.celeryev/worker.*``) with a queue whose messages live one heartbeat interval:

* peers and their liveness, in an :class:`~celeriac.events.State`; ``on_node_join``,
  ``on_node_leave`` (``worker-offline``) and ``on_node_lost`` (heartbeats stopped for
  ``freq * 2`` seconds, checked every :data:`LOST_CHECK_INTERVAL` seconds) callbacks;
* the Lamport clock moves past every clock received, our own events included;
* elections: ``app.control.election(id, topic, action)`` makes every worker send
  ``worker-elect``; every worker that receives one answers ``worker-elect-ack`` and keeps
  ``(clock, "hostname.pid")`` per election id. Once a worker has heard the candidacy of
  every live peer (or :data:`ELECTION_TIMEOUT` passed) the lowest ``(clock, hostname.pid)``
  wins, the same answer everywhere; the winner runs the topic's handler (``task``: send
  the signature in ``action``).

Skipped with ``--without-gossip``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...canvas import Signature
from ...events.receiver import EventReceiver
from ...events.state import State, Worker
from ...exceptions import BrokerConnectionError, ConnectionClosedError
from ...utils.tasks import cancel_and_wait
from ..bootsteps import Step
from .events import Events

if TYPE_CHECKING:
    from ...events.payloads import Event
    from .consumer import Consumer

__all__ = ["Gossip", "LOST_CHECK_INTERVAL", "ELECTION_TIMEOUT"]

logger = logging.getLogger("celeriac.worker.gossip")

#: Seconds between two looks for peers whose heartbeats stopped (Celery's).
LOST_CHECK_INTERVAL = 5.0
#: Seconds an election waits for the candidacies of every live peer.
ELECTION_TIMEOUT = 2.0
#: Elections remembered at once (older ones are forgotten).
MAX_ELECTIONS = 100

NodeHook = Callable[[Worker], None]
ElectionHook = Callable[[str, str, str], None]


class _Election:
    __slots__ = ("acks", "action", "candidates", "decided", "requested", "timer", "topic")

    def __init__(self) -> None:
        self.candidates: dict[str, tuple[int, str, str, Any]] = {}
        self.acks: set[str] = set()
        self.requested = False
        self.decided: str | None = None
        self.topic = ""
        self.action: Any = None
        self.timer: asyncio.TimerHandle | None = None


class Gossip(Step):
    """Tracks peers and runs elections (see the module docstring)."""

    label = "Gossip"
    requires = (Events,)

    def __init__(self, parent: Consumer, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self.c = parent
        self.hostname = parent.hostname
        self.full_id = f"{parent.hostname}.{os.getpid()}"
        self.state = State(on_node_join=self._joined, on_node_leave=self._left)
        self.on_node_join: list[NodeHook] = []
        self.on_node_leave: list[NodeHook] = []
        self.on_node_lost: list[NodeHook] = []
        #: Called with ``(election id, topic, winner "hostname.pid")`` after each election.
        self.on_elected: list[ElectionHook] = []
        #: Topic -> handler run by the winner with the election's ``action``.
        self.election_handlers: dict[str, Callable[[Any], None]] = {"task": self._call_task}
        self.elections: dict[str, _Election] = {}
        self._gone: set[str] = set()
        self.receiver: EventReceiver | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def include_if(self, c: Consumer) -> bool:
        return not getattr(c.worker, "without_gossip", False)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, c: Consumer) -> None:
        assert c.connection is not None
        conf = c.app.conf
        c.gossip = self
        freq = getattr(c.worker, "heartbeat_interval", None) or 2.0
        self.receiver = EventReceiver(
            c.connection,
            {"*": self.on_event},
            routing_key="worker.#",
            exchange=conf.event_exchange or "celeryev",
            queue_prefix=conf.event_queue_prefix or "celeryev",
            queue_ttl=freq,
            queue_expires=conf.event_queue_expires,
            accept=tuple(conf.accept_content or ("json",)),
            clock=c.worker.clock,
        )
        await self.receiver.declare()
        self._tasks = [
            asyncio.ensure_future(self._listen(self.receiver)),
            asyncio.ensure_future(self._check_lost()),
        ]

    async def _listen(self, receiver: EventReceiver) -> None:
        while True:
            try:
                await receiver.capture()
                return
            except ConnectionClosedError:
                return
            except BrokerConnectionError as exc:
                logger.warning("gossip: broker unreachable (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _check_lost(self) -> None:
        while True:
            await asyncio.sleep(LOST_CHECK_INTERVAL)
            self.check_lost()

    async def stop(self, c: Consumer) -> None:
        if self.receiver is not None:
            self.receiver.stop()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks, logger, "gossip")
        for election in self.elections.values():
            if election.timer is not None:
                election.timer.cancel()

    # -- peers -----------------------------------------------------------------------------

    @property
    def peers(self) -> list[Worker]:
        """The other workers alive now."""
        return [w for w in self.state.alive_workers() if w.hostname != self.hostname]

    def on_event(self, event: Event) -> None:
        type_ = event.get("type", "")
        if type_ == "worker-elect":
            self.on_elect(event)
        elif type_ == "worker-elect-ack":
            self.on_elect_ack(event)
        elif type_.startswith("task-"):
            return
        elif event.get("hostname") != self.hostname:
            self.state.event(event)

    def _joined(self, worker: Worker) -> None:
        self._gone.discard(worker.hostname)
        logger.info("%s joined the party", worker.hostname)
        self._call(self.on_node_join, worker)

    def _left(self, worker: Worker) -> None:
        self._gone.add(worker.hostname)
        logger.info("%s left", worker.hostname)
        self._call(self.on_node_leave, worker)

    def check_lost(self) -> list[Worker]:
        """Report and forget peers whose heartbeats stopped; returns them."""
        alive = {w.hostname for w in self.state.alive_workers()}
        lost = [w for h, w in list(self.state.workers.items()) if h not in alive]
        reported = []
        for worker in lost:
            self.state.workers.pop(worker.hostname, None)
            if worker.hostname in self._gone:  # said goodbye: not lost
                self._gone.discard(worker.hostname)
                continue
            logger.info("missed heartbeat from %s", worker.hostname)
            reported.append(worker)
            self._call(self.on_node_lost, worker)
        return reported

    @staticmethod
    def _call(hooks: list[NodeHook], worker: Worker) -> None:
        for hook in list(hooks):
            try:
                hook(worker)
            except Exception:
                logger.exception("gossip: node hook %r failed", hook)

    # -- elections -------------------------------------------------------------------------

    def election(self, id: str | None, topic: str | None, action: Any = None) -> None:
        """Stand in election ``id`` (the ``election`` control command)."""
        if not id:
            raise ValueError("an election needs an id")
        election = self._election(id)
        election.requested = True
        election.topic = topic or ""
        election.action = action
        dispatcher = self.c.event_dispatcher
        assert dispatcher is not None
        dispatcher.send("worker-elect", id=id, topic=topic, action=action, cver=1)
        loop = asyncio.get_running_loop()
        election.timer = loop.call_later(ELECTION_TIMEOUT, self._decide, id, True)

    def _election(self, id: str) -> _Election:
        election = self.elections.get(id)
        if election is None:
            while len(self.elections) >= MAX_ELECTIONS:
                old = self.elections.pop(next(iter(self.elections)))
                if old.timer is not None:
                    old.timer.cancel()
            election = self.elections[id] = _Election()
        return election

    def on_elect(self, event: Event) -> None:
        id = event.get("id")
        hostname = event.get("hostname")
        if not isinstance(id, str) or not isinstance(hostname, str):
            return
        election = self._election(id)
        clock = event.get("clock")
        full_id = f"{hostname}.{event.get('pid')}"
        election.candidates[hostname] = (
            clock if isinstance(clock, int) else 0,
            full_id,
            str(event.get("topic") or ""),
            event.get("action"),
        )
        dispatcher = self.c.event_dispatcher
        if dispatcher is not None:
            dispatcher.send("worker-elect-ack", id=id)
        self._decide(id)

    def on_elect_ack(self, event: Event) -> None:
        id = event.get("id")
        hostname = event.get("hostname")
        if not isinstance(id, str) or not isinstance(hostname, str):
            return
        self._election(id).acks.add(hostname)
        self._decide(id)

    def _decide(self, id: str, timed_out: bool = False) -> None:
        election = self.elections.get(id)
        if election is None or election.decided is not None or not election.requested:
            return
        if not election.candidates:
            return
        others = {w.hostname for w in self.peers}
        heard = set(election.candidates)
        everyone = (others | {self.hostname}) <= heard and len(election.acks) >= len(others)
        if not everyone and not timed_out:
            return
        if election.timer is not None:
            election.timer.cancel()
            election.timer = None
        _clock, winner, topic, action = min(election.candidates.values(), key=lambda c: c[:2])
        election.decided = winner
        if winner == self.full_id:
            logger.info("I won the election %r", id)
            handler = self.election_handlers.get(topic)
            if handler is not None:
                try:
                    handler(action if action is not None else election.action)
                except Exception:
                    logger.exception("election %r: the %r handler failed", id, topic)
        else:
            logger.info("node %s elected for %r", winner, id)
        for hook in list(self.on_elected):
            try:
                hook(id, topic, winner)
            except Exception:
                logger.exception("gossip: election hook %r failed", hook)

    def _call_task(self, action: Any) -> None:
        """The ``task`` topic: send the signature the election carried."""
        if not isinstance(action, dict):
            logger.error("election: the task topic needs a signature dict, got %r", action)
            return
        sig = Signature.from_dict(action)
        outgoing, _route, _ = self.c.app.build_outgoing(
            sig.task, sig.args, sig.kwargs, **sig.options
        )
        self.c.outbox.add(outgoing)
