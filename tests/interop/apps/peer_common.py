"""What the celeriac and Celery peer apps share: settings from the environment, the
exception type both raise, and the Redis counters the tasks write to.

The test sets ``INTEROP_*`` variables for both kinds of worker subprocess:
``INTEROP_BROKER_URL`` and ``INTEROP_BACKEND_URL`` (Redis URLs), ``INTEROP_PREFIX`` (the
``global_keyprefix`` of broker, results and counters) and ``INTEROP_NODE`` (a label
recorded with each execution, e.g. ``celery`` or ``celeriac``), and optionally
``INTEROP_VISIBILITY_TIMEOUT`` (seconds).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

#: Test process <-> worker subprocess contract.
ENV_BROKER = "INTEROP_BROKER_URL"
ENV_BACKEND = "INTEROP_BACKEND_URL"
ENV_PREFIX = "INTEROP_PREFIX"
ENV_NODE = "INTEROP_NODE"
ENV_VISIBILITY = "INTEROP_VISIBILITY_TIMEOUT"


class InteropError(Exception):
    """A user-defined exception raised by a task; clients must re-raise this type."""


def settings() -> dict[str, Any]:
    """Celery setting names shared by both peers, read when a peer module is imported."""
    prefix = os.environ[ENV_PREFIX]
    transport: dict[str, Any] = {"global_keyprefix": prefix}
    if os.environ.get(ENV_VISIBILITY):
        transport["visibility_timeout"] = float(os.environ[ENV_VISIBILITY])
    return {
        "broker_url": os.environ[ENV_BROKER],
        "result_backend": os.environ[ENV_BACKEND],
        "broker_transport_options": transport,
        "result_backend_transport_options": {"global_keyprefix": prefix},
    }


_lock = threading.Lock()
_clients: dict[int, Any] = {}


def counters() -> Any:
    """A redis-py client for the counters, one per process (pool children fork)."""
    import redis

    pid = os.getpid()
    with _lock:
        client = _clients.get(pid)
        if client is None:
            client = _clients[pid] = redis.Redis.from_url(os.environ[ENV_BACKEND])
    return client


def count_run(task_id: str) -> None:
    """Record one execution of ``task_id`` and which kind of worker ran it."""
    prefix = os.environ[ENV_PREFIX]
    node = os.environ.get(ENV_NODE, "?")
    pipe = counters().pipeline(transaction=False)
    pipe.incr(f"{prefix}runs:{task_id}")
    pipe.sadd(f"{prefix}ran-on:{node}", task_id)
    pipe.execute()


def record_order(label: str) -> None:
    """Append ``label`` to the execution-order list."""
    counters().rpush(f"{os.environ[ENV_PREFIX]}order", label)


def now() -> float:
    return time.time()
