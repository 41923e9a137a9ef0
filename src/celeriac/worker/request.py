"""A task message on its way through the worker.

A :class:`Request` is made by the task's strategy for every message it accepts. It
becomes a :class:`~celeriac.worker.pools.base.Job` for the pool, and turns the pool's
:class:`~celeriac.worker.pools.base.Outcome` into the effects Celery users expect, in an
order that never loses work:

- the retry message is published before the original is acked;
- with ``acks_late`` the message is acked only after its result is stored;
- a lost execution (the pool process died) is requeued (``reject_on_worker_lost``) or
  recorded as FAILURE with WorkerLostError, never dropped silently.

This is the worker's hot path: no log formatting below the active level, nothing built per
message that could be built per task type.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import states
from ..exceptions import Retry, TaskRevokedError
from ..utils.saferepr import saferepr
from .pools.base import Job, Outcome

if TYPE_CHECKING:
    from ..messaging.message import Message
    from ..protocol import TaskMessage
    from ..task import Task
    from .consumer.consumer import Consumer

__all__ = ["Request"]

logger = logging.getLogger("celeriac.worker.request")


class Request:
    """One task execution request held by the worker."""

    __slots__ = (
        "_job",
        "acknowledged",
        "consumer",
        "id",
        "ignore_result",
        "message",
        "name",
        "task",
        "time_start",
        "tm",
        "worker_pid",
    )

    def __init__(
        self,
        consumer: Consumer,
        message: Message,
        task: Task[Any, Any],
        tm: TaskMessage,
        task_ignores_result: bool,
    ) -> None:
        self.consumer = consumer
        self.message = message
        self.task = task
        self.tm = tm
        #: Either side may ask for no result, as Celery's worker does: the task as the
        #: worker declares it (resolved once per task by its strategy), or the message
        #: (a client that knows the task differently).
        self.ignore_result = tm.ignore_result or task_ignores_result
        self.id = tm.id
        self.name = tm.name
        self.time_start: float | None = None
        self.worker_pid: int | None = None
        self.acknowledged = False
        self._job: Job | None = None

    def __repr__(self) -> str:
        return f"<Request {self.name}[{self.id}]>"

    # -- views ------------------------------------------------------------------------------

    @property
    def eta(self) -> datetime | None:
        return self.tm.eta

    @property
    def expires(self) -> datetime | None:
        return self.tm.expires

    def is_expired(self, now: datetime | None = None) -> bool:
        expires = self.tm.expires
        if expires is None:
            return False
        return (now or datetime.now(UTC)) >= expires

    def job(self) -> Job:
        """The pool's view of this request (built once)."""
        job = self._job
        if job is None:
            tm = self.tm
            info = self.message.delivery_info
            context = {
                "id": tm.id,
                "name": tm.name,
                "shadow": tm.shadow,
                "args": tm.args,
                "kwargs": tm.kwargs,
                "retries": tm.retries,
                "eta": tm.headers.get("eta"),
                "expires": tm.headers.get("expires"),
                "hostname": self.consumer.hostname,
                "delivery_info": {
                    "exchange": info.get("exchange"),
                    "routing_key": info.get("routing_key"),
                    "priority": self.message.properties.get("priority"),
                    "redelivered": self.message.redelivered,
                },
                "parent_id": tm.parent_id,
                "root_id": tm.root_id,
                "group": tm.group_id,
                "group_index": tm.group_index,
                "headers": tm.headers,
                "reply_to": self.message.properties.get("reply_to"),
                "correlation_id": self.message.properties.get("correlation_id", tm.id),
                "origin": tm.origin,
                "is_eager": False,
                "called_directly": False,
                "timelimit": (tm.time_limit, tm.soft_time_limit),
                "callbacks": tm.callbacks,
                "errbacks": tm.errbacks,
                "chain": tm.chain,
                "chord": tm.chord,
                "ignore_result": self.ignore_result,
            }
            time_limit = tm.time_limit if tm.time_limit is not None else self.task.time_limit
            soft = (
                tm.soft_time_limit if tm.soft_time_limit is not None else self.task.soft_time_limit
            )
            job = self._job = Job(tm.id, tm.name, tm.args, tm.kwargs, context, time_limit, soft)
        return job

    # -- settlement helpers -----------------------------------------------------------------

    def acknowledge(self) -> None:
        if not self.acknowledged:
            self.acknowledged = True
            self.message.ack()

    def reject(self, requeue: bool) -> None:
        if not self.acknowledged:
            self.acknowledged = True
            self.message.reject(requeue=requeue)

    # -- execution --------------------------------------------------------------------------

    def execute_using_pool(self) -> None:
        """Hand the request to the pool; the callbacks below take it from there."""
        self.consumer.pool.submit(self.job(), self.on_started, self.on_done)

    def on_started(self, job: Job, pid: int) -> None:
        consumer = self.consumer
        self.worker_pid = pid
        self.time_start = consumer.loop.time()
        consumer.state.task_started(self)
        events = consumer.task_events
        if events is not None:
            events.send("task-started", uuid=self.id)
        if not self.task.acks_late:
            self.acknowledge()
        if self.task.track_started and not self.ignore_result:
            consumer.store_result(self, states.STARTED, {"pid": pid, "hostname": consumer.hostname})

    def on_done(self, job: Job, outcome: Outcome) -> None:
        consumer = self.consumer
        consumer.state.task_finished(self)
        consumer.on_request_done(self)
        state = outcome.state
        if state == states.SUCCESS:
            self.on_success(outcome)
        elif state == states.RETRY:
            self.on_retry(outcome)
        elif state == states.FAILURE:
            self.on_failure(outcome)
        elif state == states.REJECTED:
            self.reject(requeue=outcome.requeue)
            if consumer.task_events is not None:
                consumer.task_events.send("task-rejected", uuid=self.id, requeue=outcome.requeue)
            consumer.store_result(self, states.REJECTED, outcome.exc)
        else:  # IGNORED
            self.acknowledge()

    def on_success(self, outcome: Outcome) -> None:
        consumer = self.consumer
        if consumer.info_enabled:
            logger.info(
                "Task %s[%s] succeeded in %.6fs: %r",
                self.name,
                self.id,
                outcome.runtime,
                outcome.retval,
            )
        events = consumer.task_events
        if events is not None:
            events.send(
                "task-succeeded",
                uuid=self.id,
                result=saferepr(outcome.retval, 1024),
                runtime=outcome.runtime,
            )
        tm = self.tm
        if tm.callbacks or tm.chain:
            consumer.send_callbacks(self, outcome.retval)
        if self.ignore_result:
            self.acknowledge()
        elif self.task.acks_late:
            consumer.store_result(self, states.SUCCESS, outcome.retval, after=self.acknowledge)
        else:
            consumer.store_result(self, states.SUCCESS, outcome.retval)

    def on_retry(self, outcome: Outcome) -> None:
        """Publish the next attempt, record RETRY, then ack this one."""
        retry = outcome.exc
        assert isinstance(retry, Retry)
        consumer = self.consumer
        logger.info("Task %s[%s] retry: %s", self.name, self.id, retry)
        if consumer.task_events is not None:
            consumer.task_events.send(
                "task-retried",
                uuid=self.id,
                exception=saferepr(retry.exc),
                traceback=outcome.traceback,
            )
        consumer.send_retry(self, retry, after=self.acknowledge)
        if not self.ignore_result:
            consumer.store_result(
                self, states.RETRY, retry.exc if retry.exc is not None else retry, outcome.traceback
            )

    def on_failure(self, outcome: Outcome) -> None:
        consumer = self.consumer
        task = self.task
        exc = outcome.exc
        requeue_lost = task.reject_on_worker_lost or consumer.terminating
        if outcome.worker_lost and task.acks_late and requeue_lost:
            logger.error(
                "Task %s[%s]: the process executing it was lost (%s); "
                "requeued (reject_on_worker_lost)",
                self.name,
                self.id,
                exc,
            )
            self.reject(requeue=True)
            return
        logger.error(
            "Task %s[%s] raised unexpected: %r\n%s",
            self.name,
            self.id,
            exc,
            outcome.traceback or "",
        )
        if consumer.task_events is not None:
            consumer.task_events.send(
                "task-failed", uuid=self.id, exception=saferepr(exc), traceback=outcome.traceback
            )
        if self.tm.errbacks:
            consumer.send_errbacks(self)
        store = not self.ignore_result or task.store_errors_even_if_ignored
        settle = self._settle_failure if task.acks_late else None
        if store:
            consumer.store_result(self, states.FAILURE, exc, outcome.traceback, after=settle)
        elif settle is not None:
            settle()
        if not task.acks_late:
            self.acknowledge()

    def _settle_failure(self) -> None:
        if self.task.acks_on_failure_or_timeout:
            self.acknowledge()
        else:
            self.reject(requeue=False)

    # -- dropped before execution ---------------------------------------------------------

    def revoked(self, reason: str = "revoked") -> None:
        """Drop without running: REVOKED state stored, message acked."""
        consumer = self.consumer
        logger.warning("Discarding %s task %s[%s]", reason, self.name, self.id)
        consumer.state.task_finished(self)
        if consumer.task_events is not None:
            consumer.task_events.send(
                "task-revoked",
                uuid=self.id,
                terminated=False,
                signum=None,
                expired=reason == "expired",
            )
        exc = TaskRevokedError(reason)
        if not self.ignore_result or self.task.store_errors_even_if_ignored:
            consumer.store_result(self, states.REVOKED, exc, after=self.acknowledge)
        else:
            self.acknowledge()
