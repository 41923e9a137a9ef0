"""The Huey app of ``peers.py``: ``huey_consumer _peer_huey.huey`` imports it.

One no-op task that counts its execution with :mod:`_redis_counter`, as every side of
``peers.py`` does. Results are off (``results=False``): the celeriac figures beside it are
"results ignored" ones. The worker's instance takes its URL from ``BENCH_BROKER_URL``.
"""

from __future__ import annotations

import os
from typing import Any

from huey import RedisHuey

import _redis_counter

#: The Huey instance name: its queue is the Redis list ``huey.redis.bench``.
NAME = "bench"


def make_huey(url: str) -> tuple[RedisHuey, Any]:
    """A Huey instance on ``url`` (Redis list queue, blocking BRPOP) and its no-op task."""
    huey = RedisHuey(NAME, url=url, results=False)
    hit = _redis_counter.hit

    @huey.task(name="bench.noop")
    def noop() -> None:
        hit()

    return huey, noop


def enqueue(url: str, n: int) -> None:
    """Queue ``n`` calls of the no-op task. Huey has no bulk enqueue: one LPUSH per call."""
    huey, noop = make_huey(url)
    try:
        for _ in range(n):
            noop()
    finally:
        huey.storage.pool.disconnect()


def _worker_huey() -> RedisHuey | None:
    url = os.environ.get("BENCH_BROKER_URL")
    return None if url is None else make_huey(url)[0]


huey = _worker_huey()
