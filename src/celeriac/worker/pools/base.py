"""The contract between the worker and its execution pools.

The worker's main loop never runs user code itself (except in the ``solo`` pool, whose
point is to do exactly that). It hands a :class:`Job` to the pool, and the pool reports
back on the event loop thread: ``on_start(job, pid)`` when the execution begins (early
acks and the STARTED state hang off that) and ``on_done(job, outcome)`` when it ends.

A pool accepts any number of jobs and starts them as slots free up, in submission order;
jobs not yet started can be taken back with :meth:`Pool.take_pending` (warm shutdown
returns them to the broker at once instead of running them).

Inside the pool, :mod:`celeriac.worker.tracer` runs the task and turns what happened into
an :class:`Outcome`. Result storage, retry publishing, acks and events happen back in
the main loop, batched, never in the pool.
"""

from __future__ import annotations

import abc
import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ...app import Celeriac

__all__ = ["Job", "Outcome", "Pool", "OnStart", "OnDone"]


@dataclass(slots=True)
class Job:
    """Everything a pool needs to run one task execution. Picklable (crosses to children)."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    #: Fields of ``task.request`` (retries, eta, expires, hostname, delivery_info,
    #: parent_id, root_id, group, headers, reply_to, correlation_id, origin, ...).
    context: dict[str, Any] = field(default_factory=dict)
    #: Hard limit in seconds: the execution is killed (or abandoned, per pool).
    time_limit: float | None = None
    #: Soft limit in seconds: SoftTimeLimitExceeded is raised inside the task.
    soft_time_limit: float | None = None


@dataclass(slots=True)
class Outcome:
    """What one execution came to.

    ``state`` is SUCCESS, FAILURE, RETRY, IGNORED or REJECTED. For FAILURE ``exc`` is the
    exception (or a stand-in when the original could not cross a process boundary) and
    ``traceback`` its formatted text. For RETRY ``exc`` is the :class:`~celeriac.exceptions.Retry`.
    For REJECTED, ``requeue`` says whether the message goes back to its queue.
    """

    state: str
    retval: Any = None
    exc: BaseException | None = None
    traceback: str | None = None
    runtime: float = 0.0
    pid: int = 0
    requeue: bool = False
    #: True when the process running the job died (WorkerLostError).
    worker_lost: bool = False


OnStart = Callable[[Job, int], None]
OnDone = Callable[[Job, Outcome], None]


class Pool(abc.ABC):
    """An execution pool of ``limit`` slots, driven from the worker's event loop."""

    #: Name used by ``-P``.
    name: ClassVar[str] = ""
    #: Whether the pool can enforce a hard time limit by killing the execution.
    kills_on_time_limit: ClassVar[bool] = False

    def __init__(
        self,
        app: Celeriac,
        limit: int,
        *,
        max_tasks_per_child: int | None = None,
        hostname: str | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"pool concurrency must be at least 1, not {limit}")
        self.app = app
        self.limit = limit
        self.max_tasks_per_child = max_tasks_per_child
        self.hostname = hostname
        self.loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} limit={self.limit} active={self.num_active}>"

    async def start(self) -> None:
        """Called on the worker's loop before the first submit."""
        self.loop = asyncio.get_running_loop()

    @abc.abstractmethod
    async def stop(self) -> None:
        """Warm stop: run nothing new, wait for running executions to finish."""

    @abc.abstractmethod
    async def terminate(self) -> None:
        """Cold stop: kill running executions now (where the pool can) and return."""

    @abc.abstractmethod
    def submit(self, job: Job, on_start: OnStart, on_done: OnDone) -> None:
        """Queue a job; it starts when a slot is free. Callbacks run on the loop thread."""

    @abc.abstractmethod
    def take_pending(self) -> list[Job]:
        """Remove and return every submitted job that has not started yet."""

    @property
    @abc.abstractmethod
    def num_active(self) -> int:
        """Executions running now."""

    @property
    def num_pending(self) -> int:
        return 0

    @property
    def pids(self) -> list[int]:
        """Process ids that execute tasks (the worker's own for in-process pools)."""
        return [os.getpid()]

    # -- remote control (pool_grow, pool_shrink, pool_restart, revoke --terminate) -----------
    # Called by control commands and the autoscaler, never on the per-job path.

    def grow(self, n: int = 1) -> None:
        """Add ``n`` slots.

        Raises:
            NotImplementedError: the pool has a fixed size (``solo``).
        """
        raise NotImplementedError(f"the {self.name} pool cannot change its size")

    def shrink(self, n: int = 1) -> None:
        """Remove ``n`` slots (never below one); running executions finish first.

        Raises:
            NotImplementedError: the pool has a fixed size (``solo``).
            ValueError: ``n`` would leave no slot.
        """
        raise NotImplementedError(f"the {self.name} pool cannot change its size")

    def restart(self) -> None:
        """Replace the processes that run tasks once they are idle (``pool_restart``).

        Raises:
            NotImplementedError: the pool runs tasks in this process.
        """
        raise NotImplementedError(f"the {self.name} pool runs tasks in the worker process")

    def terminate_job(self, job_id: str, signum: int | None = None) -> bool:
        """Stop the running execution of ``job_id`` now, if this pool can.

        The job is reported at once with state REVOKED (its request acks the message; the
        caller records the revocation), and a late outcome of the execution is ignored.
        Returns False when the job is not running here or the pool cannot stop it (the
        solo pool runs sync tasks on the loop this is called from).
        """
        return False

    def _check_shrink(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        if self.limit - n < 1:
            raise ValueError(f"cannot shrink the pool by {n}: it has {self.limit} slot(s)")

    def info(self) -> dict[str, Any]:
        """A ``stats()``-style description of the pool."""
        return {
            "implementation": f"celeriac.worker.pools:{type(self).__name__}",
            "max-concurrency": self.limit,
            "processes": self.pids,
            "max-tasks-per-child": self.max_tasks_per_child or "N/A",
        }
