"""WorkController: the worker process, assembled from the ``worker`` blueprint.

Shutdown follows Celery: the first SIGTERM/SIGINT starts a *warm* shutdown (stop
consuming, return reserved-but-unstarted messages to the broker at once, let running
tasks finish, settle everything); a second signal during it makes it *cold* (kill running
executions, return every unsettled message, exit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..events.clock import LamportClock
from ..utils.nodenames import default_nodename, expand_hostname
from .bootsteps import Blueprint
from .state import WorkerState

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..messaging.entities import Queue
    from .consumer.consumer import Consumer
    from .pools.base import Pool

__all__ = ["WorkController", "WorkerBlueprint", "parse_autoscale"]

logger = logging.getLogger("celeriac.worker")


def parse_autoscale(value: tuple[int, int] | str | None) -> tuple[int, int] | None:
    """``"10,3"`` or ``(10, 3)`` -> ``(max, min)``; a single number means ``(n, n)``.

    Raises:
        ValueError: not numbers, below 1, or min above max.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"--autoscale takes MAX,MIN (whole numbers), not {value!r}") from None
    else:
        numbers = [int(v) for v in value]
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2:
        raise ValueError(f"--autoscale takes MAX,MIN, not {value!r}")
    max_, min_ = numbers
    if min_ < 1 or max_ < min_:
        raise ValueError(f"--autoscale needs 1 <= MIN <= MAX, got max={max_} min={min_}")
    return max_, min_


class WorkerBlueprint(Blueprint):
    name = "worker"
    default_steps = {
        "celeriac.worker.components:Hub",
        "celeriac.worker.components:Timer",
        "celeriac.worker.components:Queues",
        "celeriac.worker.components:Pool",
        "celeriac.worker.statedb:StateDB",
        "celeriac.worker.components:Consumer",
        "celeriac.worker.autoscale:AutoscalerStep",
        "celeriac.worker.memory:Memory",
    }


class WorkController:
    """A worker: pool + consumer + the rest, started and stopped as one blueprint."""

    def __init__(
        self,
        app: Celeriac,
        *,
        hostname: str | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        queues: Sequence[str] | None = None,
        exclude_queues: Sequence[str] | None = None,
        max_tasks_per_child: int | None = None,
        prefetch_multiplier: int | None = None,
        install_signal_handlers: bool = True,
        without_mingle: bool = False,
        without_gossip: bool = False,
        without_heartbeat: bool = False,
        heartbeat_interval: float | None = None,
        statedb: str | None = None,
        autoscale: tuple[int, int] | str | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.hostname = default_nodename(expand_hostname(hostname) if hostname else None)
        self.pool_name = pool or conf.worker_pool or "prefork"
        self.concurrency = int(concurrency or conf.worker_concurrency or os.cpu_count() or 1)
        self.queue_names = list(queues or ())
        self.exclude_queues = list(exclude_queues or ())
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        if prefetch_multiplier is not None:
            conf.worker_prefetch_multiplier = prefetch_multiplier
        self.install_signal_handlers = install_signal_handlers
        self.without_mingle = without_mingle
        self.without_gossip = without_gossip
        self.without_heartbeat = without_heartbeat
        #: Seconds between worker-heartbeat events (``--heartbeat-interval``).
        self.heartbeat_interval = float(heartbeat_interval or 2.0)
        #: ``--statedb`` path (persistent revoked ids and clock), or None.
        self.statedb_path: str | None = statedb or conf.worker_state_db or None
        #: ``--autoscale`` ``(max, min)``, or None.
        self.autoscale = parse_autoscale(autoscale)
        if self.autoscale is not None:
            self.concurrency = self.autoscale[1]
        #: The node's Lamport clock (events, remote control, mingle, gossip, state db).
        self.clock = LamportClock()
        self.started_at = time.monotonic()
        self.statedb: Any = None
        self.autoscaler: Any = None
        self.state = WorkerState()
        self.loop: asyncio.AbstractEventLoop
        self.timer: Any = None
        self.queues: list[Queue] = []
        self.pool: Pool
        self.consumer: Consumer | None = None
        self.consumer_task: asyncio.Task[None] | None = None
        self.blueprint = WorkerBlueprint(name="worker")
        self._shutdown_requested: asyncio.Event | None = None
        self._cold = False
        self._signals = 0
        self._terminating: asyncio.Future[None] | None = None
        self.exitcode = 0
        #: Set once the consumer is consuming (thread-safe; for tests and embedders).
        self.ready = threading.Event()

    def __repr__(self) -> str:
        return f"<WorkController {self.hostname} pool={self.pool_name} c={self.concurrency}>"

    # -- running ----------------------------------------------------------------------------

    def start(self) -> int:
        """Run the worker in this thread until shut down; returns the exit code."""
        try:
            import uvloop  # type: ignore[import-not-found]
        except ImportError:
            return asyncio.run(self.run())
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(self.run())

    async def run(self) -> int:
        """Start every step, wait for a shutdown request, then stop them."""
        self._shutdown_requested = asyncio.Event()
        self.app.import_default_modules()
        self.blueprint.apply(self)
        if self.install_signal_handlers:
            self._install_signal_handlers()
        try:
            await self.blueprint.start(self)
            await self._wait_for_shutdown()
        finally:
            await self.blueprint.stop(self, close=True, terminate=self._cold)
            await self.app.aclose()
            if self.install_signal_handlers:
                self._remove_signal_handlers()
        return self.exitcode

    async def _wait_for_shutdown(self) -> None:
        assert self._shutdown_requested is not None
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._shutdown_requested.wait())}
        if self.consumer_task is not None:
            waiters.add(self.consumer_task)
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for fut in pending:
            if fut is not self.consumer_task:
                fut.cancel()
        if self.consumer_task in done and self.consumer_task is not None:
            exc = self.consumer_task.exception()
            if exc is not None:
                logger.critical("consumer failed: %r", exc, exc_info=exc)
                self.exitcode = 1

    def stop(self, cold: bool = False) -> None:
        """Ask the worker to shut down (thread-safe); ``cold`` kills running tasks."""
        loop = getattr(self, "loop", None)
        if loop is None or self._shutdown_requested is None:
            return
        try:
            loop.call_soon_threadsafe(self._request_shutdown, cold)
        except RuntimeError:  # the loop is closed: the worker has stopped already
            pass

    def _request_shutdown(self, cold: bool) -> None:
        if cold:
            self._cold = True
        assert self._shutdown_requested is not None
        self._shutdown_requested.set()

    # -- signals ----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                logger.debug("cannot install a handler for %s here", signum)
        if hasattr(signal, "SIGQUIT"):
            try:
                loop.add_signal_handler(signal.SIGQUIT, self._on_signal_cold, signal.SIGQUIT)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGQUIT", None)):
            if signum is not None:
                try:
                    loop.remove_signal_handler(signum)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            logger.warning("worker: warm shutdown (%s); send it again for a cold shutdown", name)
            self._request_shutdown(cold=False)
        else:
            self._on_signal_cold(signum)

    def _on_signal_cold(self, signum: int) -> None:
        logger.warning("worker: cold shutdown (%s)", signal.Signals(signum).name)
        self._cold = True
        assert self._shutdown_requested is not None
        self._shutdown_requested.set()
        consumer = self.consumer
        if consumer is not None:
            consumer.terminating = True
            # A warm shutdown may be waiting for running tasks: kill them now.
            self._terminating = asyncio.ensure_future(self.pool.terminate())

    # -- introspection ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "pool": self.pool.info() if hasattr(self, "pool") else None,
            "state": self.state.info(),
            "queues": [q.name for q in self.queues],
        }
