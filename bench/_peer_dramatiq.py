"""The Dramatiq broker of ``peers.py``: ``dramatiq _peer_dramatiq`` imports it.

One no-op actor that counts its execution with :mod:`_redis_counter`, as every side of
``peers.py`` does. Dramatiq's Redis broker with its default middleware (no results
middleware: results are not stored). The worker's broker takes its URL from
``BENCH_BROKER_URL`` and becomes Dramatiq's global broker, which the ``dramatiq`` command uses.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

import _redis_counter

QUEUE = "bench"


def make_broker(url: str) -> tuple[RedisBroker, Any]:
    """A Redis broker on ``url`` (set as Dramatiq's global broker) and its no-op actor."""
    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)
    hit = _redis_counter.hit

    def noop() -> None:
        hit()

    return broker, dramatiq.actor(noop, actor_name="bench_noop", queue_name=QUEUE,
                                  broker=broker)


def enqueue(url: str, n: int) -> None:
    """Queue ``n`` messages for the no-op actor. Dramatiq has no bulk enqueue (a ``group``
    sends its messages one by one): one ``send()`` (one Lua script call) per message."""
    broker, noop = make_broker(url)
    try:
        for _ in range(n):
            noop.send()
    finally:
        broker.close()


def _worker_broker() -> RedisBroker | None:
    url = os.environ.get("BENCH_BROKER_URL")
    return None if url is None else make_broker(url)[0]


broker = _worker_broker()
