"""celeriac beside Celery 5 on the same Redis, same workload, interleaved run by run.

Figures (``--figures``, default all):

* ``drain``: ``--n`` no-op tasks are queued first, then a worker is started
  (``celeriac -A _compare_celeriac worker -P <pool> -c <c> -l warning`` or
  ``celery -A _compare_celery worker -P <pool> -c <c> -l warning --without-gossip
  --without-mingle --without-heartbeat``) and the harness waits until every task ran.
  Executions are counted outside the worker (a per-process counter that a background thread
  adds to Redis with INCRBY every 5 ms, see ``_redis_counter.py``). "drain/s" is N over the
  time from the first to the last execution; "incl. start-up" from spawning the worker to
  the last execution. Results ignored and stored. celeriac's asyncio pool runs ``async
  def`` tasks, every other pool plain functions.
* ``enqueue``: tasks/s of ``delay()`` called one at a time from sync code (both), of
  ``await task.adelay()`` from async code (celeriac), and of celeriac's bulk path
  (``app.build_outgoing`` + ``Producer.publish_many``, ``--batch`` messages per call).
* ``roundtrip``: p50/p99 of ``--trips`` sequential ``delay().get()`` on an idle worker
  (results stored in Redis, read back through each side's own result client), after
  ``--trip-warmup`` seconds of untimed ones. A "floor"
  row, measured in the same runs, times ``LPUSH`` + ``BRPOP`` round trips through a bare
  redis-py relay process (``_redis_relay.py``): what this host allows any Redis-based queue,
  since its speed varies from day to day; each side's p50 is also shown "x floor".
* ``rss``: resident memory of the worker and its pool processes once it has started
  (after 21 warm-up calls), and after ``--rss-n`` more no-op tasks; the same worker run as
  ``roundtrip``. ``--rss-n 1000000`` for issue 4's figure. The growth is also shown for
  each half of the tasks: a leak grows alike in both, while memory that settles (pymalloc
  pools and glibc heap pages touched for the first time) grows in the first half only.

Every executed task is counted: a run in which executions != tasks queued is an error row,
not a figure. Configurations alternate celeriac, Celery, celeriac, Celery... within every
run, ``--runs`` runs; tables show medians and the ratio celeriac/Celery against the first
``--celery-pools`` entry (for latency and memory, lower is better). The Redis database of
``--redis`` is FLUSHED before every measurement: point it at a database nothing else uses.

    python bench/compare.py                           # the whole comparison (~10 min, 2 cores)
    python bench/compare.py --n 2000 --runs 1         # a quick check
    python bench/compare.py --figures drain --pools prefork:2,asyncio:100 --results ignored
    python bench/compare.py --transports redis,sqlite,memory   # celeriac-only rows too
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis

import _compare_runs as runs
from _common import machine, median, table

#: Pool slots used when a pool is named without ``:<concurrency>``.
DEFAULT_CONCURRENCY = {"prefork": 2, "threads": 8, "asyncio": 100, "solo": 1}
CELERY_POOLS = ("prefork", "threads", "solo")
FIGURES = ("drain", "enqueue", "roundtrip", "rss")
TRANSPORTS = ("redis", "sqlite", "memory")
ENQUEUE_PATHS = {"celeriac": ("delay", "adelay", "bulk"), "celery": ("delay",)}
MIB = 1024 * 1024


@dataclass
class Cell:
    """One configuration of one side, measured once per run."""

    figure: str
    side: str
    transport: str
    what: tuple[Any, ...]
    measure: Callable[[], Any]
    values: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return " ".join(str(x) for x in (self.figure, self.side, self.transport, *self.what))


def add_run_args(parser: argparse.ArgumentParser, redis_db: int, counter_db: int) -> None:
    """The arguments every side-by-side script takes: how much, how often, which Redis."""
    parser.add_argument("--n", type=int, default=20_000, help="tasks per drain (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (default 3)")
    parser.add_argument("--redis", default=f"redis://127.0.0.1:6379/{redis_db}",
                        help="broker database, FLUSHED before every measurement "
                             f"(default redis://127.0.0.1:6379/{redis_db})")
    parser.add_argument("--counter-db", type=int, default=counter_db,
                        help="Redis database of the execution counter, same server "
                             f"(default {counter_db})")
    parser.add_argument("--retries", type=int, default=1,
                        help="repeat a measurement whose Redis databases something else "
                             "flushed, up to this many times (default 1)")


def counter_url_for(args: argparse.Namespace) -> str:
    """The counter database's URL, after checking Redis answers and the two differ."""
    base, _, db = args.redis.rpartition("/")
    if db == str(args.counter_db):
        raise SystemExit("--counter-db must differ from the broker database (it is flushed)")
    try:
        redis.Redis.from_url(args.redis).ping()
    except redis.RedisError as exc:
        raise SystemExit(f"no Redis at {args.redis}: {exc}") from None
    return f"{base}/{args.counter_db}"


def run_all(cells: list[Cell], runs: int, retries: int) -> None:
    """Every cell once per run, in the given order, ``runs`` times (interleaved)."""
    print(f"machine: {machine()}", file=sys.stderr)
    for run in range(1, runs + 1):
        print(f"run {run}/{runs}", file=sys.stderr)
        for cell in cells:
            run_cell(cell, retries)


def run_cell(cell: Cell, retries: int) -> None:
    """Measure once; a run spoiled by outside interference is repeated up to ``retries``
    times (and still listed as an error), any other failure is final."""
    for attempt in range(retries + 1):
        try:
            value = cell.measure()
            break
        except Exception as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            cell.errors.append(f"{type(exc).__name__}: {first_line}")
            print(f"  {cell.label}: ERROR {type(exc).__name__}: {exc}", file=sys.stderr)
            if not isinstance(exc, runs.Interference) or attempt == retries:
                return
            print(f"  {cell.label}: measuring again", file=sys.stderr)
    cell.values.append(value)
    if isinstance(value, runs.Session):
        shown = f"p50 {value.p(50):.2f} ms, p99 {value.p(99):.2f} ms" if value.latencies else ""
        if value.tasks:
            shown += f" rss {value.rss_start / MIB:.1f} -> {value.rss_after / MIB:.1f} MiB"
    elif isinstance(value, tuple):
        shown = f"{value[0]:,.0f}/s ({value[1]:,.0f}/s incl. start-up)"
    else:
        shown = f"{value:,.0f}/s"
    print(f"  {cell.label}: {shown}", file=sys.stderr)


# -- building the configurations -------------------------------------------------------------


def parse_pools(spec: str, allowed: Sequence[str]) -> list[tuple[str, int]]:
    """``pool[:concurrency][/worker-arg/...]``: extra worker arguments after ``/`` make a
    variant of its own (``threads:8/-E`` beside ``threads:8`` measures events on vs off)."""
    pools = []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        head, *extras = item.split("/")
        name, _, conc = head.partition(":")
        if name not in allowed:
            raise SystemExit(f"unknown pool {name!r}; choose from {', '.join(allowed)}")
        label = "/".join([name, *extras])
        try:
            pools.append((label, int(conc) if conc else DEFAULT_CONCURRENCY[name]))
        except ValueError:
            raise SystemExit(f"bad concurrency in {item!r}: expected pool:<integer>") from None
    return pools


def parse_list(spec: str, known: Sequence[str], what: str) -> list[str]:
    items = [t.strip() for t in spec.split(",") if t.strip()]
    for item in items:
        if item not in known:
            raise SystemExit(f"unknown {what} {item!r}; choose from {', '.join(known)}")
    return items


class Brokers:
    """The broker of each measurement: the shared Redis database, or a fresh SQLite file."""

    def __init__(self, redis_url: str, counter_url: str) -> None:
        self.redis = runs.redis_broker(redis_url, counter_url)
        self.counter_url = counter_url

    def call(self, transport: str, fn: Callable[[runs.Broker], Any]) -> Callable[[], Any]:
        def measure() -> Any:
            if transport == "redis":
                return fn(self.redis)
            broker = (runs.sqlite_broker if transport == "sqlite" else runs.memory_broker)(
                self.counter_url)
            try:
                return fn(broker)
            finally:
                runs.drop(broker)

        return measure


def build_cells(args: argparse.Namespace, brokers: Brokers) -> dict[str, list[Cell]]:
    figures = parse_list(args.figures, FIGURES, "figure")
    transports = parse_list(args.transports, TRANSPORTS, "transport")
    results = parse_list(args.results, ("ignored", "stored"), "results mode")
    pools = parse_pools(args.pools, tuple(DEFAULT_CONCURRENCY))
    celery_pools = parse_pools(args.celery_pools, CELERY_POOLS) if not args.no_celery else []
    sides = [("celeriac", pools), ("celery", celery_pools)]
    n, batch = args.n, args.batch
    cells: dict[str, list[Cell]] = {f: [] for f in FIGURES}

    if "enqueue" in figures:
        for transport in transports:
            for side, side_pools in sides:
                if side == "celery" and (transport != "redis" or not side_pools):
                    continue
                for path in ENQUEUE_PATHS[side]:
                    cells["enqueue"].append(Cell(
                        "enqueue", side, transport, (path,),
                        brokers.call(transport, lambda b, s=side, p=path: runs.enqueue(
                            s, b, p, args.enqueue_n or n, batch))))
    if "drain" in figures:
        for transport in (t for t in transports if t != "memory"):
            for side, side_pools in sides:
                if side == "celery" and transport != "redis":
                    continue
                for pool, conc in side_pools:
                    for mode in results:
                        cells["drain"].append(Cell(
                            "drain", side, transport, (pool, conc, mode),
                            brokers.call(transport, lambda b, s=side, p=pool, c=conc,
                                         m=mode: runs.drain(s, b, p, c, m == "stored", n,
                                                            batch, args.celery_native))))
    idle = [f for f in ("roundtrip", "rss") if f in figures]
    if idle and "redis" in transports:
        trips = args.trips if "roundtrip" in figures else 0
        rss_n = args.rss_n if "rss" in figures else 0
        warmup = args.trip_warmup
        if trips:
            cells["roundtrip"].append(Cell(
                "idle", "floor", "redis", ("raw redis-py relay", 1),
                brokers.call("redis", lambda b: runs.relay_floor(b, trips, warmup))))
        for side, side_pools in sides:
            for pool, conc in side_pools:
                cells["roundtrip"].append(Cell(
                    "idle", side, "redis", (pool, conc),
                    brokers.call("redis", lambda b, s=side, p=pool, c=conc: runs.idle_worker(
                        s, b, p, c, trips, rss_n, batch, warmup))))
    return cells


def schedule(cells: dict[str, list[Cell]]) -> list[Cell]:
    """One run's order: per figure, celeriac and Celery configurations alternating (the
    round-trip floor first)."""
    order: list[Cell] = []
    for figure in ("enqueue", "drain", "roundtrip"):
        order.extend(c for c in cells[figure] if c.side == "floor")
        mine = [c for c in cells[figure] if c.side == "celeriac"]
        theirs = [c for c in cells[figure] if c.side == "celery"]
        for a, b in zip_longest(mine, theirs):
            order.extend(c for c in (a, b) if c is not None)
    return order


# -- tables ----------------------------------------------------------------------------------


def ratio(mine: float, theirs: float) -> str:
    if mine != mine or theirs != theirs or not theirs:
        return "-"
    return f"{mine / theirs:.2f}x"


def runs_shown(cell: Cell, key: Callable[[Any], float], fmt: str = "{:,.0f}") -> str:
    shown = ", ".join(fmt.format(key(v)) for v in cell.values)
    return shown + (f" ({len(cell.errors)} ERROR)" if cell.errors else "")


def med(cell: Cell | None, key: Callable[[Any], float]) -> float:
    if cell is None or not cell.values:
        return float("nan")
    return median([key(v) for v in cell.values])


def slashed(values: list[float], fmt: str) -> str:
    """Several figures in one cell, ``-`` for one not measured."""
    return " / ".join("-" if v != v else fmt.format(v) for v in values)


def value_or_error(cell: Cell, key: Callable[[Any], float]) -> Any:
    return "ERROR" if not cell.values and cell.errors else med(cell, key)


def enqueue_table(cells: list[Cell]) -> str:
    ref = next((c for c in cells if c.side == "celery"), None)
    rate: Callable[[Any], float] = float
    rows = [[c.side, c.transport, *c.what, value_or_error(c, rate),
             ratio(med(c, rate), med(ref, rate)) if c.transport == "redis" else "-",
             runs_shown(c, rate)] for c in cells]
    return table(["side", "transport", "path", "tasks/s", "x Celery delay()", "runs"], rows)


def drain_table(cells: list[Cell]) -> str:
    rows = []
    for c in cells:
        ref = next((r for r in cells if r.side == "celery" and r.what[2] == c.what[2]), None)
        rate, startup = itemgetter(0), itemgetter(1)
        rows.append([c.side, c.transport, *c.what, value_or_error(c, rate), med(c, startup),
                     ratio(med(c, rate), med(ref, rate)) if c.transport == "redis" else "-",
                     runs_shown(c, rate)])
    return table(["side", "transport", "pool", "-c", "results", "drain/s", "incl. start-up",
                  "x Celery", "runs (drain/s)"], rows)


def roundtrip_table(cells: list[Cell]) -> str:
    ref = next((c for c in cells if c.side == "celery"), None)
    floor = next((c for c in cells if c.side == "floor"), None)
    p50, p99 = (lambda s: s.p(50)), (lambda s: s.p(99))

    def cpu(cell: Cell) -> str:
        return slashed([med(cell, lambda s, i=i: s.cpu_us[i]) for i in range(3)], "{:.0f}")

    rows = [[c.side, *c.what, value_or_error(c, p50), med(c, p99),
             ratio(med(c, p50), med(ref, p50)), ratio(med(c, p99), med(ref, p99)),
             *([ratio(med(c, p50), med(floor, p50)) if c.side != "floor" else "-"]
               if floor else []),
             cpu(c), runs_shown(c, p50, "{:.2f}")] for c in cells]
    return table(["side", "pool", "-c", "p50 ms", "p99 ms", "p50 x Celery", "p99 x Celery",
                  *(["p50 x floor"] if floor else []), "CPU us/trip worker/client/Redis",
                  "runs (p50 ms)"], rows)


def rss_table(cells: list[Cell]) -> str:
    cells = [c for c in cells if c.side != "floor"]
    ref = next((c for c in cells if c.side == "celery"), None)
    start, after = (lambda s: s.rss_start / MIB), (lambda s: s.rss_after / MIB)
    growth = attrgetter("growth_kib_per_1000")
    first, second = (lambda s: s.halves_kib_per_1000[0]), (lambda s: s.halves_kib_per_1000[1])
    rows = [[c.side, *c.what, value_or_error(c, start), med(c, after),
             c.values[0].tasks if c.values else "-", med(c, growth),
             slashed([med(c, first), med(c, second)], "{:+.2f}"),
             ratio(med(c, start), med(ref, start)),
             runs_shown(c, growth, "{:+.2f}")] for c in cells]
    return table(["side", "pool", "-c", "RSS start MiB", "RSS after MiB", "tasks",
                  "KiB/1000 tasks", "1st / 2nd half", "start x Celery", "runs (KiB/1000)"],
                 rows)


def bars(cells: dict[str, list[Cell]]) -> list[str]:
    """Issue 4's bars, from the medians above (only those this run measured)."""
    out: list[str] = []

    def bar(text: str, value: float, target: float, higher: bool = True) -> None:
        if value != value:
            return
        ok = value >= target if higher else value <= target
        out.append(f"{'PASS' if ok else 'FAIL'}  {text}: {value:,.2f} (bar {target:g})")

    rate = itemgetter(0)
    drains = [c for c in cells["drain"] if c.transport == "redis"]
    for mode, target in (("ignored", 20), ("stored", 10)):
        ref = next((c for c in drains if c.side == "celery" and c.what[2] == mode), None)
        mine = [c for c in drains if c.side == "celeriac" and c.what[2] == mode]
        if ref is not None and mine:
            best = max(mine, key=lambda c: med(c, rate) if c.values else 0.0)
            bar(f"drain, results {mode}, best pool ({best.what[0]}) x Celery",
                med(best, rate) / med(ref, rate), target)
            prefork = [c for c in mine if c.what[0] == "prefork"]
            if prefork and mode == "ignored":
                bar("drain, prefork x Celery prefork", med(prefork[0], rate) / med(ref, rate),
                    10)
    enq = {(c.side, c.what[0]): c for c in cells["enqueue"] if c.transport == "redis"}
    ref = enq.get(("celery", "delay"))
    if ref is not None:
        for path, target in (("delay", 5), ("bulk", 30)):
            if ("celeriac", path) in enq:
                bar(f"enqueue {path} x Celery delay()",
                    med(enq["celeriac", path], float) / med(ref, float), target)
    for c in (c for c in cells["roundtrip"] if c.side == "celeriac"):
        pool = f"{c.what[0]}:{c.what[1]}"
        bar(f"round trip p50 ms ({pool})", med(c, lambda s: s.p(50)), 0.5, higher=False)
        bar(f"round trip p99 ms ({pool})", med(c, lambda s: s.p(99)), 2, higher=False)
        bar(f"RSS growth KiB per 1000 tasks ({pool})", med(c, lambda s: s.growth_kib_per_1000),
            1, higher=False)
    return out


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    add_run_args(parser, redis_db=13, counter_db=12)
    parser.add_argument("--pools", default="prefork,threads,asyncio,solo",
                        help="celeriac pools, each optionally pool:<concurrency> "
                             "(defaults: prefork:2 threads:8 asyncio:100 solo:1)")
    parser.add_argument("--celery-pools", default="prefork:2",
                        help="Celery pools (prefork, threads, solo); the first is the "
                             "reference of the ratios (default prefork:2)")
    parser.add_argument("--transports", default="redis",
                        help="redis, and celeriac-only sqlite / memory rows (default redis)")
    parser.add_argument("--results", default="ignored,stored",
                        help="drain with results ignored and/or stored")
    parser.add_argument("--figures", default=",".join(FIGURES),
                        help=f"any of {', '.join(FIGURES)} (default all)")
    parser.add_argument("--enqueue-n", type=int, default=0,
                        help="tasks per enqueue measurement (default: --n)")
    parser.add_argument("--trips", type=int, default=500,
                        help="sequential delay().get() calls per round-trip run (default 500)")
    parser.add_argument("--trip-warmup", type=float, default=runs.TRIP_WARMUP,
                        help="seconds of untimed round trips before the timed ones (default "
                             f"{runs.TRIP_WARMUP:g}; 0 times the host waking from a pause too)")
    parser.add_argument("--rss-n", type=int, default=10_000,
                        help="tasks between the two RSS readings (default 10000; issue 4's "
                             "figure: 1000000)")
    parser.add_argument("--batch", type=int, default=10000,
                        help="calls per send_many (the bulk publish API)")
    parser.add_argument("--celery-native", action="store_true",
                        help="queue the Celery worker's drain tasks with Celery's delay() "
                             "(default: celeriac's bulk publish, same bytes for both)")
    parser.add_argument("--worker-args", default="",
                        help="extra arguments for celeriac workers, e.g. "
                             "'--prefetch-multiplier 64' (quoted, split on spaces)")
    parser.add_argument("--celery-worker-args", default="",
                        help="extra arguments for Celery workers")
    parser.add_argument("--no-celery", action="store_true", help="celeriac rows only")
    args = parser.parse_args(argv)
    if min(args.n, args.runs, args.batch, args.trips, args.rss_n + 1) < 1:
        raise SystemExit("--n, --runs, --batch and --trips must be at least 1")
    if not math.isfinite(args.trip_warmup) or args.trip_warmup < 0:
        raise SystemExit("--trip-warmup must be a finite number of seconds, 0 or more")

    runs.WORKER_ARGS["celeriac"] = args.worker_args.split()
    runs.WORKER_ARGS["celery"] = args.celery_worker_args.split()
    brokers = Brokers(args.redis, counter_url_for(args))
    cells = build_cells(args, brokers)
    run_all(schedule(cells), args.runs, args.retries)
    brokers.redis.reset()

    print()
    print(f"celeriac vs Celery {_celery_version()} on {args.redis} (flushed per measurement); "
          f"median of {args.runs} run(s), interleaved celeriac/Celery")
    print(f"machine: {machine()}")
    if args.worker_args or args.celery_worker_args:
        print(f"worker args: celeriac {args.worker_args!r}, Celery {args.celery_worker_args!r}")
    print(f"command: python bench/compare.py {' '.join(sys.argv[1:] if argv is None else argv)}"
          .rstrip())
    if cells["enqueue"]:
        print(f"\n(2) enqueue: {args.enqueue_n or args.n:,} tasks, no worker running")
        print(enqueue_table(cells["enqueue"]))
    if cells["drain"]:
        print(f"\n(1) drain: {args.n:,} no-op tasks queued first, then the worker started "
              "(Celery: " + " ".join(runs.CELERY_WORKER_FLAGS) + ")")
        print(drain_table(cells["drain"]))
    idle = cells["roundtrip"]
    if idle and args.trips and "roundtrip" in args.figures:
        print(f"\n(3) round trip: {args.trips} sequential delay().get() on an idle worker, "
              f"after {args.trip_warmup:g} s of untimed ones, results in Redis (lower is better)")
        if any(c.side == "floor" for c in idle):
            print("floor: LPUSH + BRPOP round trips through a raw redis-py relay process on "
                  "the same Redis (BRPOP, LPUSH reply): no message format, acks or backend")
        print("CPU per trip: the worker with its pool processes (the floor: the relay), this "
              "process as the client, the Redis server; they share the host's cores")
        print(roundtrip_table(idle))
    if idle and args.rss_n and "rss" in args.figures:
        print(f"\n(4) worker RSS (worker + pool processes) after start, and growth over"
              f" {args.rss_n:,} no-op tasks run after a warm-up of {runs.RSS_WARMUP:,}"
              " (lower is better)")
        print(rss_table(idle))
    checks = bars(cells)
    if checks:
        print("\nissue 4 bars (from the medians above)")
        print("\n".join(checks))
    failed = [c for f in cells.values() for c in f if c.errors]
    for c in failed:
        print(f"\nERROR {c.label}: {len(c.errors)} failed run(s), first: {c.errors[0]}")
    return 1 if failed else 0


def _celery_version() -> str:
    try:
        import celery
    except ImportError:
        return "(not installed)"
    return str(celery.__version__)


if __name__ == "__main__":
    sys.exit(main())
