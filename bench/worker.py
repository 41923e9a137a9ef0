"""Worker benchmark: how fast tasks go in (enqueue) and how fast a worker drains them.

Enqueue: ``delay()`` one call at a time from sync code, ``adelay()`` one await at a time
from async code, and the bulk path (messages built with ``app.build_outgoing`` and
published ``--batch`` at a time with ``Producer.publish_many``), per transport.

Drain: ``--n`` no-op tasks are queued first, then ``celeriac worker -P <pool> -c <n>`` is
started as a subprocess and the benchmark waits until every task has run. Executions are
counted outside the worker (see ``_tasks.py``): each process's count and the times of its
first and last execution land in a small file every 5 ms. "drain/s" is the count divided
by the time from the first to the last execution; "incl. start-up" divides by the time
from starting the worker process to the last execution. ``asyncio`` runs ``async def``
tasks, the other pools plain functions. Memory cannot cross processes, so it is measured
for enqueue only.

Every configuration runs ``--runs`` times, the configurations interleaved run by run so
that drift of the machine spreads over all of them; the tables show medians.

    python bench/worker.py --n 20000 --runs 3 --pools prefork,threads,asyncio,solo
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Scratch,
    machine,
    median,
    start_worker,
    table,
    wait_for_count,
)
from celeriac import Celeriac
from celeriac.utils import portal

#: Pool slots used when ``--pools`` names a pool without ``:<concurrency>``.
DEFAULT_CONCURRENCY = {"prefork": 2, "threads": 8, "asyncio": 100, "solo": 1}
#: Transports that can be measured, and whether a worker in another process can drain them.
TRANSPORTS = {"sqlite": True, "memory": False}
ENQUEUE_PATHS = ("delay", "adelay", "bulk")


@dataclass
class Series:
    """The measurements of one configuration, run after run."""

    label: tuple[Any, ...]
    rates: list[float] = field(default_factory=list)
    with_startup: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# -- enqueue ---------------------------------------------------------------------------------


def client(url: str) -> tuple[Celeriac, Any]:
    """An app of its own on ``url`` with the no-op task registered (as a user's client)."""
    app = Celeriac("bench-client", broker=url, backend=url, set_as_current=False, environ={})

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        return None

    return app, noop


def enqueue_delay(app: Celeriac, task: Any, n: int) -> float:
    task.delay()  # connect and declare before the clock starts
    started = time.perf_counter()
    for _ in range(n):
        task.delay()
    return n / (time.perf_counter() - started)


def enqueue_adelay(app: Celeriac, task: Any, n: int) -> float:
    async def run() -> float:
        await task.adelay()
        started = time.perf_counter()
        for _ in range(n):
            await task.adelay()
        elapsed = time.perf_counter() - started
        await app.aclose()
        return n / elapsed

    return asyncio.run(run())


def publish_bulk(app: Celeriac, name: str, n: int, batch: int) -> float:
    """Publish ``n`` calls of ``name`` in batches; returns messages per second."""

    async def run() -> float:
        producer = await app.get_producer()
        first, route, _ = app.build_outgoing(name)
        declare = (route.queue,)
        await producer.publish_many([first], declare=declare)
        started = time.perf_counter()
        for start in range(0, n, batch):
            outgoing = [app.build_outgoing(name)[0] for _ in range(min(batch, n - start))]
            await producer.publish_many(outgoing, declare=declare)
        return n / (time.perf_counter() - started)

    return portal.run(run())


def measure_enqueue(transport: str, path: str, n: int, batch: int) -> float:
    scratch = Scratch(f"enqueue-{transport}") if transport == "sqlite" else None
    url = scratch.url if scratch else f"memory://bench-{uuid.uuid4().hex}"
    app, task = client(url)
    try:
        if path == "delay":
            return enqueue_delay(app, task, n)
        if path == "adelay":
            return enqueue_adelay(app, task, n)
        return publish_bulk(app, "bench.noop", n, batch)
    finally:
        app.close()
        if scratch:
            scratch.remove()


# -- drain -----------------------------------------------------------------------------------


def measure_drain(pool: str, concurrency: int, stored: bool, n: int,
                  batch: int) -> tuple[float, float]:
    """Queue ``n`` tasks, start a worker, time it until all ran: (drain/s, incl. start-up)."""
    name = ("bench.anoop" if pool == "asyncio" else "bench.noop") + ("_stored" if stored else "")
    scratch = Scratch(f"drain-{pool}")
    try:
        app, _ = client(scratch.url)
        try:
            publish_bulk(app, name, n - 1, batch)  # the warm-up publish is the n-th
        finally:
            app.close()
        spawned = time.time()
        worker = start_worker(scratch, pool, concurrency)
        try:
            _, first, last = wait_for_count(scratch, worker, n, timeout=max(120.0, n / 50))
        finally:
            worker.stop()
        return n / max(last - first, 1e-9), n / (last - spawned)
    finally:
        scratch.remove()


# -- the run ---------------------------------------------------------------------------------


def parse_pools(spec: str) -> list[tuple[str, int]]:
    pools = []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, conc = item.partition(":")
        if name not in DEFAULT_CONCURRENCY:
            raise SystemExit(f"unknown pool {name!r}; choose from {', '.join(DEFAULT_CONCURRENCY)}")
        try:
            pools.append((name, int(conc) if conc else DEFAULT_CONCURRENCY[name]))
        except ValueError:
            raise SystemExit(f"bad concurrency in {item!r}: expected pool:<integer>") from None
    return pools


def parse_list(spec: str, known: Any, what: str) -> list[str]:
    items = [t.strip() for t in spec.split(",") if t.strip()]
    for item in items:
        if item not in known:
            raise SystemExit(f"unknown {what} {item!r}; choose from {', '.join(known)}")
    return items


def attempt(series: Series, fn: Callable[[], Any]) -> None:
    try:
        value = fn()
    except Exception as exc:
        series.errors.append(f"{type(exc).__name__}: {exc}")
        print(f"  {series.label}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    if isinstance(value, tuple):
        series.rates.append(value[0])
        series.with_startup.append(value[1])
    else:
        series.rates.append(value)
    print(f"  {series.label}: {series.rates[-1]:,.0f}/s", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration")
    parser.add_argument("--pools", default="prefork,threads,asyncio,solo",
                        help="pools to drain with, each optionally pool:<concurrency>")
    parser.add_argument("--transports", default="sqlite,memory", help="sqlite and/or memory")
    parser.add_argument("--results", default="ignored,stored", help="ignored and/or stored")
    parser.add_argument("--batch", type=int, default=1000, help="messages per bulk publish")
    parser.add_argument("--skip-enqueue", action="store_true", help="measure drain only")
    parser.add_argument("--skip-drain", action="store_true", help="measure enqueue only")
    args = parser.parse_args(argv)
    if args.n < 1 or args.runs < 1 or args.batch < 1:
        raise SystemExit("--n, --runs and --batch must be at least 1")
    pools = parse_pools(args.pools)
    transports = parse_list(args.transports, TRANSPORTS, "transport")
    results = parse_list(args.results, ("ignored", "stored"), "results mode")

    enqueue = [] if args.skip_enqueue else [
        Series((t, p)) for t in transports for p in ENQUEUE_PATHS
    ]
    drain = [] if args.skip_drain else [
        Series((t, pool, conc, mode))
        for t in transports if TRANSPORTS[t]
        for pool, conc in pools
        for mode in results
    ]
    print(f"machine: {machine()}", file=sys.stderr)
    for run in range(1, args.runs + 1):
        print(f"run {run}/{args.runs}", file=sys.stderr)
        for s in enqueue:
            transport, path = s.label
            attempt(s, lambda t=transport, p=path: measure_enqueue(t, p, args.n, args.batch))
        for s in drain:
            _, pool, conc, mode = s.label
            attempt(s, lambda p=pool, c=conc, m=mode: measure_drain(
                p, c, m == "stored", args.n, args.batch))

    print()
    print(f"celeriac worker benchmark: n={args.n:,} tasks, median of {args.runs} run(s)")
    print(f"machine: {machine()}")
    if enqueue:
        print()
        print(table(
            ["transport", "enqueue path", "tasks/s", "runs"],
            [[*s.label, median(s.rates), _runs(s)] for s in enqueue],
        ))
    if drain:
        print()
        print(table(
            ["transport", "pool", "-c", "results", "drain/s", "incl. start-up", "runs"],
            [[*s.label, median(s.rates), median(s.with_startup), _runs(s)] for s in drain],
        ))
    if "memory" in transports and not args.skip_drain:
        print("\nmemory:// is in-process only: no drain measurement (the worker is another "
              "process)")
    failed = [s for s in enqueue + drain if s.errors]
    for s in failed:
        print(f"\n{s.label}: {len(s.errors)} failed run(s), first: {s.errors[0]}")


def _runs(s: Series) -> str:
    shown = ", ".join(f"{r:,.0f}" for r in s.rates)
    return shown + (f" ({len(s.errors)} failed)" if s.errors else "")


if __name__ == "__main__":
    main()
