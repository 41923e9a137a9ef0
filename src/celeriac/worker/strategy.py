"""Strategies: how a message for one task type becomes a running request.

The consumer builds one strategy per registered task when it starts, so that everything
that depends only on the task type (accept list, rate limit bucket, logging switches) is
looked up once, not per message. A strategy decodes the message, makes a
:class:`~celeriac.worker.request.Request`, and then: drops it if revoked or expired; holds
it until its ETA; waits for a rate-limit token; otherwise hands it to the pool.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..exceptions import DecodeError
from ..protocol import decode_task_message
from ..utils.ratelimit import TokenBucket, parse_rate
from .consumer.events import task_received_fields
from .request import Request

if TYPE_CHECKING:
    from ..messaging.message import Message
    from ..task import Task
    from .consumer.consumer import Consumer

__all__ = ["default_strategy", "Strategy"]

logger = logging.getLogger("celeriac.worker.strategy")

Strategy = Callable[["Message"], None]


class RateLimiter:
    """Per-task token bucket with a FIFO of requests waiting for a token."""

    def __init__(self, consumer: Consumer, rate: float) -> None:
        self.consumer = consumer
        self.bucket = TokenBucket(rate, capacity=1)
        self.waiting: deque[Request] = deque()
        self._timer_set = False

    def submit(self, request: Request) -> None:
        if not self.waiting and self.bucket.can_consume(1):
            self.consumer.dispatch(request)
            return
        self.waiting.append(request)
        self._arm()

    def _arm(self) -> None:
        if not self._timer_set and self.waiting:
            self._timer_set = True
            delay = max(self.bucket.expected_time(1), 0.001)
            self.consumer.loop.call_later(delay, self._drain)

    def _drain(self) -> None:
        self._timer_set = False
        while self.waiting and self.bucket.can_consume(1):
            self.consumer.dispatch(self.waiting.popleft())
        self._arm()

    def take_all(self) -> list[Request]:
        items = list(self.waiting)
        self.waiting.clear()
        return items


def default_strategy(task: Task[Any, Any], consumer: Consumer) -> Strategy:
    """The strategy for ``task`` (see module docstring)."""
    accept = consumer.accept
    state = consumer.state
    revoked = state.revoked
    info_enabled = logger.isEnabledFor(logging.INFO)
    rate = parse_rate(task.rate_limit) if not consumer.app.conf.worker_disable_rate_limits else 0.0
    limiter = RateLimiter(consumer, rate) if rate else None
    if limiter is not None:
        consumer.rate_limiters[task.name] = limiter
    dispatch = consumer.dispatch
    proceed = limiter.submit if limiter is not None else dispatch
    ignores_result = bool(task.ignore_result)  # per task, not per message (a conf lookup)

    def task_message_handler(message: Message) -> None:
        try:
            tm = decode_task_message(message, accept)
        except DecodeError as exc:
            consumer.on_invalid_message(message, exc)
            return
        request = Request(consumer, message, task, tm, ignores_result)
        if info_enabled:
            logger.info("Task %s[%s] received", tm.name, tm.id)
        if tm.id in revoked or (state.revoked_stamps and state.stamp_revoked(tm.headers)):
            request.revoked("revoked")
            return
        if tm.expires is not None and request.is_expired():
            request.revoked("expired")
            return
        events = consumer.task_events
        if events is not None:
            events.send("task-received", **task_received_fields(tm))
        state.task_reserved(request)
        eta = tm.eta
        if eta is not None and eta > datetime.now(UTC):
            consumer.hold_until(request, eta.timestamp(), proceed)
        else:
            proceed(request)

    return task_message_handler
