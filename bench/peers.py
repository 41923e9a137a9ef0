"""Drain rate of celeriac's peers (Huey, taskiq, Dramatiq) beside celeriac, on the same Redis.

Every measurement: the broker database of ``--redis`` is FLUSHED, ``--n`` no-op tasks are
queued (not timed; with the library's own bulk enqueue where it has one, else a loop), then
one worker is started as a subprocess in its own process group and the harness waits until
every task ran:

* celeriac: ``compare.py``'s drain, results ignored, for each ``--celeriac-pools`` entry
  (``celeriac -A _compare_celeriac worker -P <pool> -c <c>``; queued with its bulk publish).
* huey: ``huey_consumer _peer_huey.huey <--huey-args>`` (``RedisHuey``, results off;
  queued one ``task()`` call at a time: Huey has no bulk enqueue).
* taskiq: ``taskiq worker _peer_taskiq:broker <--taskiq-args>`` (taskiq-redis's
  ``RedisStreamBroker``, or ``ListQueueBroker`` with ``--taskiq-broker list``; no result
  backend; queued one ``await task.kiq()`` at a time: taskiq has no bulk enqueue).
* dramatiq: ``dramatiq _peer_dramatiq <--dramatiq-args>`` (``RedisBroker``, default
  middleware; queued one ``actor.send()`` at a time: Dramatiq has no bulk enqueue).

Every task body is the same: one call of ``_redis_counter.hit()``, so executions are counted
the same way for every library, outside the worker's own machinery (a per-process counter
that a background thread adds to Redis with INCRBY every 5 ms). "drain/s" is N over the time
from the first to the last execution; "incl. start-up" is N over the time from spawning the
worker to the last execution. A run in which executions != tasks queued is an error, not a
figure. Runs are interleaved (celeriac pools, huey, taskiq, dramatiq, celeriac pools, ...),
``--runs`` of each; the table shows medians and the ratio of celeriac's best pool to each
peer, and a last line the ratio celeriac / fastest peer.

    python bench/peers.py                          # the whole comparison (~3 min, 2 cores)
    python bench/peers.py --n 2000 --runs 1        # a quick check
    python bench/peers.py --peers dramatiq --celeriac-pools prefork:2
    python bench/peers.py --huey-args '-w 2 -k process' --taskiq-args '--workers 1'
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from operator import itemgetter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis

import _compare_runs as runs
import compare
from _common import machine, table

PEERS = ("huey", "taskiq", "dramatiq")
CELERIAC_POOLS = ("prefork", "threads", "asyncio", "solo")
#: Messages per bulk publish when queueing celeriac's tasks (``compare.py --batch``).
BATCH = 1000
#: Seconds a peer worker gets for a warm shutdown before its process group is killed.
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Peer:
    """How to queue tasks for one peer library and how to start its worker."""

    name: str
    module: str  # the bench module holding its app and ``enqueue(url, n)``
    command: tuple[str, ...]  # ``python -m`` arguments before the configurable ones
    args: list[str]  # the configurable worker arguments (concurrency, pool, logging)
    versions: tuple[str, ...]  # distributions whose versions the report names
    env: dict[str, str] = field(default_factory=dict)  # for the worker
    options: dict[str, str] = field(default_factory=dict)  # for ``enqueue`` (the same choices)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", *self.command, *self.args]

    def shown(self) -> str:
        """The worker command line as a person would type it."""
        return " ".join([self.command[0].rsplit(".", 1)[-1], *self.command[1:], *self.args])

    def version(self) -> str:
        return ", ".join(f"{d} {_version(d)}" for d in self.versions)


def make_peers(args: argparse.Namespace) -> dict[str, Peer]:
    return {
        "huey": Peer("huey", "_peer_huey", ("huey.bin.huey_consumer", "_peer_huey.huey"),
                     args.huey_args.split(), ("huey",)),
        "taskiq": Peer("taskiq", "_peer_taskiq", ("taskiq", "worker", "_peer_taskiq:broker"),
                       args.taskiq_args.split(), ("taskiq", "taskiq-redis"),
                       {"BENCH_TASKIQ_BROKER": args.taskiq_broker},
                       {"kind": args.taskiq_broker}),
        "dramatiq": Peer("dramatiq", "_peer_dramatiq", ("dramatiq", "_peer_dramatiq"),
                         args.dramatiq_args.split(), ("dramatiq",)),
    }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed)"


# -- one peer measurement --------------------------------------------------------------------


class Broker(runs.Broker):
    """``_compare_runs.Broker`` whose error messages list what the broker database holds
    (each library keeps its queue under keys of its own)."""

    def backlog(self) -> str:
        if self.raw is None:
            return ""
        try:
            keys = sorted(k for k in self.raw.scan_iter(count=1000) if k != runs.SENTINEL.encode())
            shown = []
            for key in keys[:8]:
                kind = self.raw.type(key).decode()
                size = {"list": self.raw.llen, "hash": self.raw.hlen, "stream": self.raw.xlen,
                        "zset": self.raw.zcard, "set": self.raw.scard}.get(kind)
                shown.append(f"{key.decode(errors='replace')} {kind}"
                             + (f" {size(key)}" if size else ""))
            more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
            return f" (broker db holds: {', '.join(shown) or 'nothing'}{more})"
        except redis.RedisError as exc:
            return f" (broker db unreadable: {exc})"


def spawn(peer: Peer, broker: runs.Broker) -> runs.Worker:
    """Start the peer's worker on ``broker``, in a process group of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env.update(
        peer.env,
        BENCH_BROKER_URL=broker.url,
        BENCH_COUNTER_URL=broker.counter_url,
        PYTHONPATH=os.pathsep.join(p for p in (str(runs.BENCH_DIR), env.get("PYTHONPATH")) if p),
    )
    args = peer.argv()
    fd, log_name = tempfile.mkstemp(prefix=f"peers-{peer.name}-", suffix=".log")
    with os.fdopen(fd, "wb") as out:
        started = time.time()
        popen = subprocess.Popen(args, cwd=runs.BENCH_DIR, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    return runs.Worker(peer.name, popen, Path(log_name), started, args)


def stop(worker: runs.Worker) -> None:
    """Warm shutdown, then SIGKILL to the whole process group; complain if any of it stays."""
    worker.stop(STOP_TIMEOUT)
    pgid = worker.popen.pid
    deadline = time.monotonic() + 5.0
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            print(f"  WARNING: processes of {worker.side}'s group {pgid} still exist after "
                  "SIGKILL", file=sys.stderr)
            return
        time.sleep(0.05)


def drain(peer: Peer, broker: Broker, n: int) -> tuple[float, float]:
    """Queue ``n`` no-op tasks, then start the worker: (first-to-last rate, incl. start-up).

    The same figures as ``_compare_runs.drain`` gives for celeriac and Celery.
    """
    broker.reset()
    importlib.import_module(peer.module).enqueue(broker.url, n, **peer.options)
    broker.check_untouched()
    worker = spawn(peer, broker)
    try:
        count = runs.wait_for(broker, worker, n, runs.drain_timeout(n))
    finally:
        stop(worker)
    return n / max(count.last - count.first, 1e-9), n / max(count.last - worker.started, 1e-9)


def celeriac_command(pool: str, concurrency: int) -> str:
    """What ``_compare_runs.spawn`` runs for celeriac (for the report)."""
    name, extras = runs.variant(pool)
    return " ".join(["celeriac -A _compare_celeriac -q worker -P", name, "-c", str(concurrency),
                     "-l warning", *runs.WORKER_ARGS["celeriac"], *extras])


# -- cells, order, table ---------------------------------------------------------------------


def build_cells(args: argparse.Namespace, broker: Broker,
                peers: dict[str, Peer]) -> list[compare.Cell]:
    """One run's cells in the order they are measured: celeriac's pools, then the peers."""
    cells = []
    for pool, conc in compare.parse_pools(args.celeriac_pools, CELERIAC_POOLS):
        cells.append(compare.Cell(
            "drain", "celeriac", "redis", (f"{pool}:{conc}",),
            lambda p=pool, c=conc: runs.drain("celeriac", broker, p, c, False, args.n, BATCH)))
    for name in compare.parse_list(args.peers, PEERS, "peer"):
        peer = peers[name]
        cells.append(compare.Cell("drain", name, "redis", (" ".join(peer.args),),
                                  lambda p=peer: drain(p, broker, args.n)))
    return cells


def best(cells: list[compare.Cell], key: Callable[[Any], float]) -> compare.Cell | None:
    measured = [c for c in cells if c.values]
    return max(measured, key=lambda c: compare.med(c, key)) if measured else None


def peers_table(cells: list[compare.Cell], peers: dict[str, Peer]) -> str:
    rate, startup = itemgetter(0), itemgetter(1)
    mine = best([c for c in cells if c.side == "celeriac"], rate)
    rows = []
    for c in cells:
        version = (f"celeriac {_version('celeriac')}" if c.side == "celeriac"
                   else peers[c.side].version())
        versus = "-" if c.side == "celeriac" else compare.ratio(compare.med(mine, rate),
                                                                compare.med(c, rate))
        rows.append([c.side, version, c.what[0], compare.value_or_error(c, rate),
                     compare.med(c, startup), versus, compare.runs_shown(c, rate)])
    return table(["side", "version", "worker config", "drain/s", "incl. start-up",
                  "celeriac best / this", "runs (drain/s)"], rows)


def verdict(cells: list[compare.Cell]) -> list[str]:
    """celeriac's best pool over the fastest peer, for each of the two rates."""
    lines = []
    for title, key in (("drain/s", itemgetter(0)), ("incl. start-up", itemgetter(1))):
        mine = best([c for c in cells if c.side == "celeriac"], key)
        theirs = best([c for c in cells if c.side != "celeriac"], key)
        if mine is None or theirs is None:
            continue
        a, b = compare.med(mine, key), compare.med(theirs, key)
        lines.append(f"celeriac / fastest peer, {title}: {compare.ratio(a, b)} "
                     f"(celeriac {mine.what[0]} {a:,.0f}/s vs {theirs.side} {b:,.0f}/s)")
    return lines


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    compare.add_run_args(parser, redis_db=10, counter_db=11)
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma list of {', '.join(PEERS)} (default all)")
    parser.add_argument("--celeriac-pools", default="asyncio:100,prefork:2",
                        help="celeriac pools, each pool:<concurrency>; the best one is compared "
                             "(default asyncio:100,prefork:2; empty: peers only)")
    parser.add_argument("--huey-args", default="-w 4 -k process -q",
                        help="huey_consumer arguments (default '-w 4 -k process -q', the fastest "
                             "here; '-w 8 -k thread' drained at about half that rate)")
    parser.add_argument("--taskiq-args", default="--workers 2 --log-level WARNING",
                        help="taskiq worker arguments (default '--workers 2 --log-level WARNING')")
    parser.add_argument("--taskiq-broker", choices=("stream", "list"), default="stream",
                        help="taskiq-redis broker: RedisStreamBroker or ListQueueBroker "
                             "(default stream)")
    parser.add_argument("--dramatiq-args", default="--processes 2 --threads 8",
                        help="dramatiq arguments (default '--processes 2 --threads 8')")
    args = parser.parse_args(argv)
    if min(args.n, args.runs) < 1:
        raise SystemExit("--n and --runs must be at least 1")
    counter_url = compare.counter_url_for(args)

    peers = make_peers(args)
    broker = Broker("redis", args.redis, args.redis, redis.Redis.from_url(counter_url),
                    counter_url, raw=redis.Redis.from_url(args.redis))
    cells = build_cells(args, broker, peers)
    if not cells:
        raise SystemExit("nothing to measure: no --peers and no --celeriac-pools")
    compare.run_all(cells, args.runs, args.retries)
    broker.reset()

    print()
    print(f"drain of {args.n:,} no-op tasks queued first, then one worker started; "
          f"{args.redis} (flushed per measurement), counter in db {args.counter_db}; "
          f"median of {args.runs} run(s), interleaved")
    print(f"machine: {machine()}")
    print(f"command: python bench/peers.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
          .rstrip())
    print("workers:")
    for c in cells:
        if c.side == "celeriac":
            pool, _, conc = c.what[0].rpartition(":")
            print(f"  celeriac  {celeriac_command(pool, int(conc))}  (results ignored)")
        else:
            extra = f"  ({peers[c.side].module}.py, " + (
                f"taskiq-redis {args.taskiq_broker} broker)" if c.side == "taskiq" else
                "results off)" if c.side == "huey" else "default middleware)")
            print(f"  {c.side:<8}  {peers[c.side].shown()}{extra}")
    print()
    print(peers_table(cells, peers))
    lines = verdict(cells)
    if lines:
        print()
        print("\n".join(lines))
    failed = [c for c in cells if c.errors]
    for c in failed:
        print(f"\nERROR {c.label}: {len(c.errors)} failed run(s), first: {c.errors[0]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
