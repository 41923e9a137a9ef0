"""Counting task executions outside the worker, in Redis, for ``compare.py``.

Both workers (celeriac's and Celery's) import this module. A task calls :func:`hit`, which
costs it one uncontended lock and a clock read. A daemon thread per process (started at the
first hit, restarted in a forked child) adds the process's new executions to one Redis key
with ``INCRBY`` every few milliseconds and records the times of its first and last
execution in two hashes keyed by pid, all in one pipelined call. The harness reads the key
and the hashes: the counting never costs the worker's main loop a broker round trip, so it
cannot bound the drain rate.

The counter lives in its own Redis database (``BENCH_COUNTER_URL``) so that flushing the
broker's database between runs and counting are independent.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import redis

#: Seconds between two flushes of a process's counter (``BENCH_COUNTER_INTERVAL`` overrides).
FLUSH_INTERVAL = 0.005
#: Redis keys of the counter: executions, first and last execution time per pid.
COUNT_KEY = "bench:executions"
FIRST_KEY = "bench:first"
LAST_KEY = "bench:last"


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.flusher: threading.Thread | None = None

    def hit(self) -> None:
        now = time.time()
        with self.lock:
            self.count += 1
            if self.count == 1:
                self.first = now
            self.last = now
        if self.flusher is None:
            self._start_flusher()

    def _start_flusher(self) -> None:
        with self.lock:
            if self.flusher is not None:
                return
            self.flusher = threading.Thread(
                target=self._flush_forever, name="bench-counter", daemon=True
            )
            self.flusher.start()

    def _flush_forever(self) -> None:
        client = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
        pid = os.getpid()
        interval = float(os.environ.get("BENCH_COUNTER_INTERVAL") or FLUSH_INTERVAL)
        flushed = 0
        first_sent = False
        while True:
            with self.lock:
                count, first, last = self.count, self.first, self.last
            if count != flushed:
                pipe = client.pipeline(transaction=False)
                pipe.incrby(COUNT_KEY, count - flushed)
                if not first_sent:
                    pipe.hset(FIRST_KEY, str(pid), repr(first))
                pipe.hset(LAST_KEY, str(pid), repr(last))
                try:
                    pipe.execute()
                except redis.RedisError:
                    pass  # counted again at the next flush
                else:
                    flushed, first_sent = count, True
            time.sleep(interval)


_counter = _Counter()


def _after_fork() -> None:
    global _counter
    _counter = _Counter()


os.register_at_fork(after_in_child=_after_fork)


def hit() -> None:
    """Count one execution in this process."""
    _counter.hit()


# -- the harness's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Count:
    """Executions counted so far, and the epoch times of the first and the last one."""

    total: int
    first: float
    last: float


def read(client: redis.Redis) -> Count:
    pipe = client.pipeline(transaction=False)
    pipe.get(COUNT_KEY)
    pipe.hvals(FIRST_KEY)
    pipe.hvals(LAST_KEY)
    total, firsts, lasts = pipe.execute()
    return Count(
        int(total or 0),
        min((float(v) for v in firsts), default=0.0),
        max((float(v) for v in lasts), default=0.0),
    )


def reset(client: redis.Redis) -> None:
    client.delete(COUNT_KEY, FIRST_KEY, LAST_KEY)
