"""One measurement each, for celeriac and Celery 5 on the same broker (used by ``compare.py``).

Every function here starts from a flushed broker database and a zeroed counter, measures
one thing once and returns numbers; ``compare.py`` decides the order and the repetitions.
Workers are subprocesses (``celeriac worker`` / ``celery worker``) in their own process
groups; executions are counted outside them (:mod:`_redis_counter`).

Messages for the drain and memory figures are queued with celeriac's bulk publish on both
sides: the workers read the same bytes (celeriac writes Celery's wire format), and
queueing 20,000 tasks with Celery's ``delay()`` would take longer than draining them.

The round-trip figure's floor (:func:`relay_floor`) is neither side: LPUSH + BRPOP through
a bare redis-py relay process (:mod:`_redis_relay`), what the host allows any Redis queue.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

import _compare_celeriac
import _redis_counter
import _redis_relay

#: Directory of the benchmark scripts; worker subprocesses import the app modules from it.
BENCH_DIR = Path(__file__).resolve().parent
#: Seconds to wait after the last expected execution for a duplicate to show up.
SETTLE = 0.3
#: Seconds without a new execution after which a drain is declared stuck.
STALL = 30.0
#: Celery worker options: no broadcast traffic, which celeriac has no counterpart of yet.
CELERY_WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


class BenchError(RuntimeError):
    """A measurement that produced no valid figure (timeout, miscount, dead worker)."""


class Interference(BenchError):
    """Something outside the benchmark emptied its Redis databases during a measurement."""


#: Key set in the broker's and the counter's database at every reset; gone means flushed.
SENTINEL = "bench:sentinel"


@dataclass
class Broker:
    """Where one measurement runs: broker and backend URLs, and the counter's Redis."""

    transport: str
    url: str
    backend: str
    counter: redis.Redis
    counter_url: str
    raw: redis.Redis | None = None  # the broker's database, for Redis brokers
    scratch: Path | None = None
    token: str = ""

    def reset(self) -> None:
        """Empty the broker (Redis: FLUSHDB) and zero the counter; mark both databases."""
        self.token = f"{os.getpid()}-{time.monotonic_ns()}"
        if self.raw is not None:
            self.raw.flushdb()
            self.raw.set(SENTINEL, self.token)
        _redis_counter.reset(self.counter)
        self.counter.set(SENTINEL, self.token)

    def check_untouched(self) -> None:
        """Raise :class:`Interference` if a database was flushed since :meth:`reset`."""
        gone = [name for name, client in (("broker", self.raw), ("counter", self.counter))
                if client is not None and client.get(SENTINEL) != self.token.encode()]
        if gone:
            raise Interference(
                f"the {' and '.join(gone)} database(s) were emptied by something outside the "
                "benchmark during this measurement (FLUSHALL/FLUSHDB by another client?)")

    def backlog(self) -> str:
        """Where the unfinished tasks are, for error messages."""
        if self.raw is None:
            return ""
        try:
            return (f" (queue 'celery' holds {self.raw.llen('celery')}, "
                    f"unacked {self.raw.hlen('unacked')})")
        except redis.RedisError as exc:
            return f" (queue unreadable: {exc})"


def redis_broker(url: str, counter_url: str) -> Broker:
    return Broker("redis", url, url, redis.Redis.from_url(counter_url), counter_url,
                  raw=redis.Redis.from_url(url))


def sqlite_broker(counter_url: str) -> Broker:
    """A fresh SQLite broker file (and result store) in a temporary directory."""
    scratch = Path(tempfile.mkdtemp(prefix="celeriac-compare-"))
    url = f"sqlite:///{scratch / 'broker.db'}"
    return Broker("sqlite", url, url, redis.Redis.from_url(counter_url), counter_url,
                  scratch=scratch)


def memory_broker(counter_url: str) -> Broker:
    url = f"memory://compare-{os.getpid()}-{time.monotonic_ns()}"
    return Broker("memory", url, url, redis.Redis.from_url(counter_url), counter_url)


def drop(broker: Broker) -> None:
    if broker.scratch is not None:
        shutil.rmtree(broker.scratch, ignore_errors=True)


# -- worker subprocesses ---------------------------------------------------------------------


@dataclass
class Worker:
    """A worker subprocess in its own process group."""

    side: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float  # epoch seconds at spawn
    args: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss(self) -> int:
        """Resident bytes of the worker and all its children (pool processes)."""
        return int(tree_sum(self.popen.pid, lambda proc: proc.memory_info().rss))

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown; the whole group is killed if it has not exited in ``timeout`` s."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
        self.log.unlink(missing_ok=True)


#: Extra command-line arguments for each side's worker (``compare.py --worker-args``).
WORKER_ARGS: dict[str, list[str]] = {"celeriac": [], "celery": []}


def variant(pool: str) -> tuple[str, list[str]]:
    """``"threads/-E"`` -> ``("threads", ["-E"])``: the pool and its extra worker args."""
    name, *extras = pool.split("/")
    return name, extras


def spawn(side: str, broker: Broker, pool: str, concurrency: int) -> Worker:
    """Start ``celeriac worker`` or ``celery worker`` on ``broker``."""
    pool, extras = variant(pool)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERIAC_", "CELERY_"))}
    env.update(
        BENCH_BROKER_URL=broker.url,
        BENCH_RESULT_BACKEND=broker.backend,
        BENCH_COUNTER_URL=broker.counter_url,
        PYTHONPATH=os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p),
    )
    node = f"bench-{side}-{pool}@%h"
    if side == "celeriac":
        args = [sys.executable, "-m", "celeriac", "-A", "_compare_celeriac", "-q", "worker",
                "-P", pool, "-c", str(concurrency), "-l", "warning", "-n", node]
    else:
        args = [sys.executable, "-m", "celery", "-A", "_compare_celery", "-q", "worker",
                "-P", pool, "-c", str(concurrency), "-l", "warning", "-n", node,
                *CELERY_WORKER_FLAGS]
    return launch(side, args + WORKER_ARGS[side] + extras, env)


def launch(side: str, args: list[str], env: dict[str, str] | None = None) -> Worker:
    """Run ``args`` from the bench directory in a process group of its own, its output
    in a temporary log (shown when a measurement fails)."""
    fd, log_name = tempfile.mkstemp(prefix=f"compare-{side}-", suffix=".log")
    with os.fdopen(fd, "wb") as out:
        started = time.time()
        popen = subprocess.Popen(args, cwd=BENCH_DIR, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    return Worker(side, popen, Path(log_name), started, args)


def wait_for(broker: Broker, worker: Worker, n: int, timeout: float,
             stall: float = STALL) -> _redis_counter.Count:
    """Poll the counter until ``n`` executions, then check that no more than ``n`` ran.

    Gives up after ``timeout`` s, or after ``stall`` s without a single new execution.
    """
    deadline = time.monotonic() + timeout
    seen, progressed = -1, time.monotonic()
    while True:
        count = _redis_counter.read(broker.counter)
        if count.total >= n:
            break
        now = time.monotonic()
        if count.total != seen:
            seen, progressed = count.total, now
        problem = ""
        if not worker.alive():
            problem = f"worker exited ({worker.popen.returncode})"
        elif now > deadline:
            problem = f"timeout after {timeout:.0f} s"
        elif now - progressed > stall:
            problem = f"no progress for {stall:.0f} s"
        if problem:
            broker.check_untouched()
            raise BenchError(f"{worker.side}: {problem} at {count.total} of {n} executions"
                             f"{broker.backlog()}:\n{worker.tail()}")
        time.sleep(0.005)
    time.sleep(SETTLE)
    final = _redis_counter.read(broker.counter)
    broker.check_untouched()
    if final.total != n:
        raise BenchError(f"{worker.side}: {final.total} executions for {n} tasks")
    return count


def drain_timeout(n: int) -> float:
    return max(120.0, n / 200)


# -- queueing and enqueue rates --------------------------------------------------------------


def client(broker: Broker) -> Any:
    return _compare_celeriac.make_app(broker.url, broker.backend, name="bench-client")


def bulk_publish(app: Any, name: str, n: int, batch: int) -> float:
    """Publish ``n`` calls of ``name`` with ``app.send_many`` (what ``task.delay_many``
    does), ``batch`` calls a time; messages per second."""
    app.send_many(name, [((), None)])  # connect, declare
    remaining = n - 1
    started = time.perf_counter()
    while remaining > 0:
        size = min(batch, remaining)
        app.send_many(name, [((), None)] * size)
        remaining -= size
    return n / max(time.perf_counter() - started, 1e-9)


def enqueue(side: str, broker: Broker, path: str, n: int, batch: int) -> float:
    """Tasks per second through one enqueue path, no worker running."""
    broker.reset()
    if side == "celery":
        return _celery_delay(broker, n)
    app = client(broker)
    try:
        task = app.tasks["bench.noop"]
        if path == "delay":
            task.delay()  # connect and declare before the clock starts
            started = time.perf_counter()
            for _ in range(n):
                task.delay()
            return n / (time.perf_counter() - started)
        if path == "adelay":
            return asyncio.run(_adelay(app, task, n))
        return bulk_publish(app, "bench.noop", n, batch)
    finally:
        app.close()


async def _adelay(app: Any, task: Any, n: int) -> float:
    try:
        await task.adelay()
        started = time.perf_counter()
        for _ in range(n):
            await task.adelay()
        return n / (time.perf_counter() - started)
    finally:
        await app.aclose()


def _celery_app(broker: Broker) -> Any:
    import _compare_celery

    return _compare_celery.make_app(broker.url, broker.backend, name="bench-client")


def _celery_delay(broker: Broker, n: int) -> float:
    app = _celery_app(broker)
    try:
        task = app.tasks["bench.noop"]
        task.delay()
        started = time.perf_counter()
        for _ in range(n):
            task.delay()
        return n / (time.perf_counter() - started)
    finally:
        app.close()


# -- drain -----------------------------------------------------------------------------------


def drain(side: str, broker: Broker, pool: str, concurrency: int, stored: bool, n: int,
          batch: int, native_celery_queue: bool = False) -> tuple[float, float]:
    """Queue ``n`` no-op tasks, then start a worker: (first-to-last rate, incl. start-up).

    With ``native_celery_queue`` the tasks for a Celery worker are queued by Celery's own
    ``delay()`` instead of celeriac's bulk publish.
    """
    broker.reset()
    name = _compare_celeriac.task_name(variant(pool)[0] if side == "celeriac" else "", stored)
    if side == "celery" and native_celery_queue:
        capp = _celery_app(broker)
        try:
            call = capp.tasks[name].delay
            for _ in range(n):
                call()
        finally:
            capp.close()
    else:
        app = client(broker)
        try:
            bulk_publish(app, name, n, batch)
        finally:
            app.close()
    worker = spawn(side, broker, pool, concurrency)
    try:
        count = wait_for(broker, worker, n, drain_timeout(n))
    finally:
        worker.stop()
    return n / max(count.last - count.first, 1e-9), n / max(count.last - worker.started, 1e-9)


# -- round trip and memory (one idle worker) -------------------------------------------------

#: No-op tasks run before the growth is measured (fills prefetch buffers, caches, arenas).
RSS_WARMUP = 50_000
#: Seconds between the last execution and the start-up RSS reading: the pool returns
#: its last results, and a celeriac worker gives freed heap back once idle for 0.25 s.
RSS_SETTLE = 1.0
#: Seconds between the last execution and the readings growth is measured between: a
#: celeriac worker trims at most every TRIM_EVERY (10 s) once idle for IDLE_AFTER (0.25 s)
#: (celeriac.worker.memory), so a shorter wait found the warm reading untrimmed after a
#: trim at start-up, and the last one trimmed, understating growth by up to the heap's
#: slack. Both readings are taken past that window, the same way.
RSS_GROWTH_SETTLE = 11.0
#: Seconds of unmeasured round trips right before the timed ones. After a pause (the
#: start-up RSS reading's settle) this host takes 0.1 to 0.2 s to run at speed again: a
#: raw redis-py relay's trips took 170 us at first and 112 us after, celeriac's 500 and
#: 290, so the first few hundred trips measured the host waking up, not the worker.
TRIP_WARMUP = 0.5


def warm_trips(trip: Callable[[], Any], seconds: float = TRIP_WARMUP) -> int:
    """Run ``trip`` back to back for ``seconds``, untimed; returns how many ran."""
    until = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < until:
        trip()
        done += 1
    return done


def tree_sum(pid: int, read: Callable[[psutil.Process], float]) -> float:
    """``read`` summed over process ``pid`` and its live children (pool processes come
    and go, and one that exits while it is read counts for nothing)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            total += read(proc)
        except psutil.Error:
            continue
    return total


def process_cpu(proc: psutil.Process) -> float:
    """CPU seconds, user + system."""
    times = proc.cpu_times()
    return times.user + times.system


#: Seconds a Redis server's start time (from ``uptime_in_seconds``) may differ from that
#: of the local process with its pid for the two to be taken for the same.
SAME_START = 5.0


def redis_server_pid(client: redis.Redis) -> int | None:
    """The Redis server's pid where it runs on this host and its CPU times can be read.

    The pid Redis reports is checked against the local process's name and start time: a
    Redis on another host, or in a container (whose pid inside is often 1), would
    otherwise have an unrelated local process metered in its place.
    """
    try:
        info = client.info("server")
        pid = int(info["process_id"])
        proc = psutil.Process(pid)
        started = time.time() - float(info["uptime_in_seconds"])
        if "redis" not in proc.name() or abs(proc.create_time() - started) > SAME_START:
            return None
        proc.cpu_times()
    except (redis.RedisError, KeyError, ValueError, psutil.Error):
        return None
    return pid


class CpuMeter:
    """CPU per trip of a worker, of this process and of the Redis server (see
    :attr:`Session.cpu_us`); the server's is NaN where it cannot be read (another host).

    The meter's own reading (a walk of the process table) falls outside the client's
    interval: this process is read last at the start and first at the end.
    """

    def __init__(self, worker_pid: int, broker: Broker) -> None:
        self.worker_pid = worker_pid
        pid = redis_server_pid(broker.raw) if broker.raw is not None else None
        self.server = psutil.Process(pid) if pid is not None else None
        self.client = psutil.Process()
        worker, server = self._others()
        self.started = (worker, process_cpu(self.client), server)

    def _others(self) -> tuple[float, float]:
        server = process_cpu(self.server) if self.server is not None else float("nan")
        return tree_sum(self.worker_pid, process_cpu), server

    def per_trip(self, trips: int) -> tuple[float, float, float]:
        """CPU us per trip since the meter was made; all NaN if a process could not be
        read (gone, or not ours): the latencies stand without it."""
        try:
            client = process_cpu(self.client)
            worker, server = self._others()
        except psutil.Error:
            return float("nan"), float("nan"), float("nan")
        w, c, r = ((b - a) / trips * 1e6
                   for a, b in zip(self.started, (worker, client, server), strict=True))
        return w, c, r


@dataclass
class Session:
    """Round-trip latencies (ms) and worker memory (bytes) of one worker run."""

    latencies: list[float] = field(default_factory=list)
    #: CPU time per round trip (us) of the worker (with its pool processes), of this
    #: process (the client) and of the Redis server, while the trips were timed: on a
    #: small host the three share the cores, so each one's CPU lengthens the others' trips.
    cpu_us: tuple[float, float, float] = (float("nan"),) * 3
    rss_start: float = float("nan")
    #: After a warm-up of as many tasks as the worker may hold at once, many times over:
    #: growth is measured from here, so buffers filled once are not counted per task.
    rss_warm: float = float("nan")
    #: After the first half of the tasks: growth that stops (a ramp while the heap settles)
    #: and growth per task (a leak) read alike over the whole run, not over each half.
    rss_mid: float = float("nan")
    rss_after: float = float("nan")
    tasks: int = 0

    def p(self, q: int) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    @property
    def growth_kib_per_1000(self) -> float:
        if not self.tasks:
            return float("nan")
        return (self.rss_after - self._rss_base) / 1024 / (self.tasks / 1000)

    @property
    def _rss_base(self) -> float:
        return self.rss_start if math.isnan(self.rss_warm) else self.rss_warm

    @property
    def halves_kib_per_1000(self) -> tuple[float, float]:
        """Growth over the first and over the second half of the tasks."""
        if not self.tasks or math.isnan(self.rss_mid):
            return float("nan"), float("nan")
        per = 1024 * (self.tasks / 2 / 1000)
        return (self.rss_mid - self._rss_base) / per, (self.rss_after - self.rss_mid) / per


def time_trips(session: Session, trip: Callable[[], Any], trips: int, pid: int,
               broker: Broker, warmup: float) -> int:
    """Run ``warmup`` seconds of untimed ``trip`` calls, then time ``trips`` of them into
    ``session``, with the CPU per trip of process ``pid`` (and its children), of this
    process and of Redis. Returns how many trips ran in all (0 when ``trips`` is 0)."""
    if not trips:
        return 0
    done = warm_trips(trip, warmup)
    clock = time.perf_counter
    meter = CpuMeter(pid, broker)
    for _ in range(trips):
        started = clock()
        trip()
        session.latencies.append((clock() - started) * 1000)
    session.cpu_us = meter.per_trip(trips)
    return done + trips


def idle_worker(side: str, broker: Broker, pool: str, concurrency: int, trips: int,
                rss_n: int, batch: int, warmup: float = TRIP_WARMUP) -> Session:
    """Start a worker, time ``trips`` sequential ``delay().get()``, then feed it ``rss_n``
    no-op tasks and measure its memory before and after."""
    broker.reset()
    session = Session()
    worker = spawn(side, broker, pool, concurrency)
    try:
        if side == "celeriac":
            app = client(broker)
            call = app.tasks[_compare_celeriac.task_name(variant(pool)[0], True)].delay
        else:
            app = _celery_app(broker)
            call = app.tasks["bench.noop_stored"].delay
        try:
            try:  # the first call also waits for the worker to start
                call().get(timeout=60)
            except Exception as exc:
                raise BenchError(
                    f"{side} worker never answered ({exc!r}):\n{worker.tail()}") from exc
            for _ in range(20):  # warm connections and caches on both ends
                call().get(timeout=10)
            executed = 21
            wait_for(broker, worker, executed, 30)
            time.sleep(RSS_SETTLE)
            session.rss_start = worker.rss()
            executed += time_trips(session, lambda: call().get(timeout=10), trips,
                                   worker.popen.pid, broker, warmup)
        finally:
            app.close()
        if rss_n:
            feeder = client(broker)
            bare = variant(pool)[0] if side == "celeriac" else ""
            name = _compare_celeriac.task_name(bare, False)
            try:
                bulk_publish(feeder, name, RSS_WARMUP, batch)
                executed += RSS_WARMUP
                wait_for(broker, worker, executed, drain_timeout(RSS_WARMUP))
                time.sleep(RSS_GROWTH_SETTLE)
                session.rss_warm = worker.rss()
                first = rss_n // 2
                for half, size in enumerate((first, rss_n - first)):
                    if not size:  # --rss-n 1: a single half, no mid-point reading
                        continue
                    bulk_publish(feeder, name, size, batch)
                    executed += size
                    wait_for(broker, worker, executed, drain_timeout(size))
                    time.sleep(RSS_GROWTH_SETTLE)
                    if half == 0:
                        session.rss_mid = worker.rss()
            finally:
                feeder.close()
            session.rss_after = worker.rss()
            session.tasks = rss_n
    finally:
        worker.stop()
    return session


# -- the floor: a raw redis-py relay ---------------------------------------------------------

#: Keys of the relay's requests and replies, in the (flushed) broker database.
RELAY_REQUEST = "bench:relay:request"
RELAY_REPLY = "bench:relay:reply"


def spawn_relay(broker: Broker) -> Worker:
    """Start ``_redis_relay.py`` on the broker's database, like a worker (own group)."""
    return launch("relay", [sys.executable, str(BENCH_DIR / "_redis_relay.py"), broker.url,
                            RELAY_REQUEST, RELAY_REPLY])


def relay_floor(broker: Broker, trips: int, warmup: float = TRIP_WARMUP) -> Session:
    """Time ``trips`` sequential ``LPUSH`` + ``BRPOP`` through :mod:`_redis_relay`: the
    round trip the host allows any Redis-based queue (lower bound of ``delay().get()``)."""
    broker.reset()
    session = Session()
    relay = spawn_relay(broker)
    conn = redis.Redis.from_url(broker.url)
    try:

        def trip(timeout: float) -> None:
            conn.lpush(RELAY_REQUEST, b"x")
            deadline = time.monotonic() + timeout
            # Waits of a second at most, so a relay that died is reported at once.
            while conn.brpop([RELAY_REPLY], timeout=1) is None:
                if relay.alive() and time.monotonic() < deadline:
                    continue
                broker.check_untouched()
                raise BenchError(f"the relay never answered within {timeout:g} s "
                                 f"(exit code {relay.popen.poll()}):\n{relay.tail()}")

        trip(60)  # the first trip also waits for the relay to start
        for _ in range(20):
            trip(10)
        time_trips(session, lambda: trip(10), trips, relay.popen.pid, broker, warmup)
        broker.check_untouched()
        conn.lpush(RELAY_REQUEST, _redis_relay.STOP)
        try:
            relay.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
    finally:
        conn.close()
        relay.stop()
    return session
