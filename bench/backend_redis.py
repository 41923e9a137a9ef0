"""Redis result store: write throughput and store-to-wake latency against a local Redis.

Writes: ``store_many`` of ready SUCCESS metas in batches of 100 (the worker's shape) and
of 1, as results per second; for reference, Celery 5's ``RedisBackend.store_result``
(one GET and one MULTI per result) on the same Redis. Latency: ``--trips`` sequential
round trips in which one backend waits on a task id (already subscribed) and another
stores its result; the time from the start of the store to the return of ``wait_for``.

    python bench/backend_redis.py                 # redis://127.0.0.1:6379/14
    python bench/backend_redis.py -n 50000 --runs 5 --no-celery

Keys live under a fresh prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import redis
import redis.asyncio

from celeriac import states
from celeriac.backends.meta import make_meta
from celeriac.backends.redis import RedisBackend

try:
    from _common import machine, table
except ImportError:  # run from elsewhere: python bench/backend_redis.py
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine, table


def metas(n: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(n):
        tid = str(uuid.uuid4())
        out.append((tid, make_meta(tid, states.SUCCESS, i)))
    return out


async def store_rate(url: str, options: dict[str, Any], n: int, batch: int) -> float:
    backend = RedisBackend(url, options=options)
    await backend.connect()
    try:
        items = metas(n)
        batches = [items[i : i + batch] for i in range(0, n, batch)]
        start = time.perf_counter()
        for chunk in batches:
            await backend.store_many(chunk)
        return n / (time.perf_counter() - start)
    finally:
        await backend.close()


async def wake_latencies(url: str, options: dict[str, Any], trips: int) -> list[float]:
    waiter = RedisBackend(url, options=options)
    writer = RedisBackend(url, options=options)
    await waiter.connect()
    await writer.connect()
    probe = redis.asyncio.Redis.from_url(url)
    channel_prefix = options["global_keyprefix"] + "celery-task-meta-"
    out: list[float] = []
    try:
        for _ in range(trips):
            tid = str(uuid.uuid4())
            meta = make_meta(tid, states.SUCCESS, "x")
            waiting = asyncio.create_task(waiter.wait_for(tid, timeout=30))
            channel = channel_prefix + tid
            while not (await probe.pubsub_numsub(channel))[0][1]:
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0.001)  # let the waiter's first read finish
            start = time.perf_counter()
            await writer.store(tid, meta)
            await waiting
            out.append(time.perf_counter() - start)
    finally:
        await probe.aclose()
        await waiter.close()
        await writer.close()
    return out


def celery_store_rate(url: str, prefix: str, n: int) -> float:
    import celery

    app = celery.Celery("bench", broker="memory://", backend=url, set_as_current=False)
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    backend = app.backend
    ids = [str(uuid.uuid4()) for _ in range(n)]
    start = time.perf_counter()
    for i, tid in enumerate(ids):
        backend.store_result(tid, i, "SUCCESS")
    rate = n / (time.perf_counter() - start)
    app.close()
    return rate


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("-n", type=int, default=20000, help="results per write run")
    parser.add_argument("--runs", type=int, default=3, help="write runs (median shown)")
    parser.add_argument("--trips", type=int, default=500, help="store-to-wake round trips")
    parser.add_argument("--no-celery", action="store_true", help="skip the Celery reference")
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    options = {"global_keyprefix": prefix}
    rows: list[list[object]] = []
    try:
        for batch in (100, 1):
            n = args.n if batch > 1 else max(args.n // 10, 1)
            rates = [
                asyncio.run(store_rate(args.url, options, n, batch)) for _ in range(args.runs)
            ]
            rows.append([f"celeriac store_many, batches of {batch}", n, statistics.median(rates)])
        if not args.no_celery:
            n = max(args.n // 10, 1)
            rates = [celery_store_rate(args.url, prefix, n) for _ in range(args.runs)]
            rows.append(["celery RedisBackend.store_result", n, statistics.median(rates)])
        print(f"Redis result store, {machine()}")
        print(table(["writes", "results", "results/s"], rows))
        latencies = asyncio.run(wake_latencies(args.url, options, args.trips))
        ms = [v * 1000 for v in latencies]
        print()
        print(
            table(
                ["store -> wait_for wake", "trips", "p50 ms", "p99 ms", "max ms"],
                [["one waiter, pub/sub", len(ms), percentile(ms, 0.5), percentile(ms, 0.99),
                  max(ms)]],
            )
        )
    finally:
        client = redis.Redis.from_url(args.url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
        for i in range(0, len(keys), 5000):
            client.delete(*keys[i : i + 5000])
        client.close()


if __name__ == "__main__":
    main()
