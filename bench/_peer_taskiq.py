"""The taskiq broker of ``peers.py``: ``taskiq worker _peer_taskiq:broker`` imports it.

One ``async def`` no-op task that counts its execution with :mod:`_redis_counter`, as every
side of ``peers.py`` does. No result backend (taskiq's default). The broker is taskiq-redis's
``RedisStreamBroker`` (a Redis stream read by a consumer group, up to 100 messages a read,
one XACK per message; what taskiq-redis recommends), or its ``ListQueueBroker`` (one BRPOP per
message, no acks) with ``BENCH_TASKIQ_BROKER=list``. The worker's broker takes its URL from
``BENCH_BROKER_URL``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from taskiq import AsyncBroker
from taskiq_redis import ListQueueBroker, RedisStreamBroker

import _redis_counter

#: Broker kinds: ``BENCH_TASKIQ_BROKER`` picks one (default ``stream``).
KINDS = ("stream", "list")
QUEUE = "bench-taskiq"


def make_broker(url: str, kind: str = "stream") -> tuple[AsyncBroker, Any]:
    """A taskiq broker on ``url`` and its no-op task."""
    if kind == "stream":
        # The consumer group starts at the stream's first entry ("0", not the default "$"
        # for "new entries only"): the tasks are queued before the worker starts.
        broker: AsyncBroker = RedisStreamBroker(url, queue_name=QUEUE, consumer_id="0")
    elif kind == "list":
        broker = ListQueueBroker(url, queue_name=QUEUE)
    else:
        raise ValueError(f"unknown taskiq broker {kind!r}; choose from {', '.join(KINDS)}")
    hit = _redis_counter.hit

    @broker.task(task_name="bench.noop")
    async def noop() -> None:
        hit()

    return broker, noop


def enqueue(url: str, n: int, kind: str = "stream") -> None:
    """Queue ``n`` calls of the no-op task. taskiq has no bulk enqueue: one ``kiq()`` (one
    XADD or LPUSH) per call, awaited in turn."""

    async def run() -> None:
        broker, noop = make_broker(url, kind)
        await broker.startup()
        try:
            for _ in range(n):
                await noop.kiq()
        finally:
            await broker.shutdown()

    asyncio.run(run())


def _worker_broker() -> AsyncBroker | None:
    url = os.environ.get("BENCH_BROKER_URL")
    if url is None:
        return None
    return make_broker(url, os.environ.get("BENCH_TASKIQ_BROKER") or "stream")[0]


broker = _worker_broker()
