"""Remote control figures: inspect ping round trip, revoke --terminate, revoked-set memory.

1. ``inspect ping`` round trip (ms) on each transport with three workers, one of them with
   every pool slot busy: the client broadcasts ``ping`` and returns once all three answered
   (``limit=3``); median and p90 over ``--pings`` calls.
2. ``revoke(terminate=True)`` of a running task on each pool: milliseconds from the call
   until the task's state is REVOKED and its slot is free again.
3. Memory of a worker's revoked set after 100,000 revokes (tracemalloc): it is bounded by
   ``REVOKES_MAX`` (50,000) ids.

Workers run in this process (the memory transport needs that). Redis is used when it
answers on 127.0.0.1:6379 (database 15, a key prefix of its own).

    python bench/control.py [--pings 200] [--transports memory,sqlite,redis]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import socket
import statistics
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

from celeriac import Celeriac, states
from celeriac.testing import start_worker
from celeriac.worker.state import WorkerState

STOP = threading.Event()


def redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        return True
    except OSError:
        return False


def make_app(transport: str, tmp: Path) -> Celeriac:
    options: dict = {}
    if transport == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    elif transport == "sqlite":
        url = f"sqlite:///{tmp / 'broker.db'}"
    else:
        url = "redis://127.0.0.1:6379/15"
        options = {"global_keyprefix": f"bench{uuid.uuid4().hex[:8]}:"}
    app = Celeriac(
        "bench-control",
        broker=url,
        backend=f"memory://{uuid.uuid4().hex}",
        broker_transport_options=options,
        set_as_current=False,
    )

    @app.task(name="bench.block")
    def block(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not STOP.is_set():
            time.sleep(0.005)

    @app.task(name="bench.ablock")
    async def ablock(seconds: float) -> None:
        import asyncio

        await asyncio.sleep(seconds)

    return app


def ping_round_trip(transport: str, pings: int) -> tuple[float, float]:
    STOP.clear()
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(transport, Path(tmp))
        with contextlib.ExitStack() as stack:
            busy = stack.enter_context(
                start_worker(app, pool="threads", concurrency=2, hostname="busy@bench",
                             queues=["busy"], shutdown="cold")
            )  # fmt: skip
            for pool, name in (("prefork", "b@bench"), ("threads", "c@bench")):
                stack.enter_context(start_worker(app, pool=pool, concurrency=1, hostname=name))
            for _ in range(4):  # two running, two waiting for a slot
                app.tasks["bench.block"].apply_async((120,), queue="busy")
            deadline = time.monotonic() + 10
            while len(busy.state.active) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(busy.state.active) == 2, "the busy worker's slots did not fill"
            app.control.ping(timeout=2.0, limit=3)  # warm up connections
            times = []
            for _ in range(pings):
                start = time.perf_counter()
                replies = app.control.ping(timeout=2.0, limit=3)
                times.append((time.perf_counter() - start) * 1000)
                assert len(replies) == 3, replies
            STOP.set()
        app.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1]


def terminate_latency(transport: str, pool: str) -> float:
    STOP.clear()
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(transport, Path(tmp))
        name = "bench.ablock" if pool == "asyncio" else "bench.block"
        with start_worker(app, pool=pool, concurrency=1, hostname=f"{pool}@bench") as worker:
            res = app.tasks[name].delay(120)
            while res.id not in worker.state.active:
                time.sleep(0.005)
            start = time.perf_counter()
            app.control.revoke(res.id, terminate=True, reply=True, limit=1)
            while res.state != states.REVOKED or worker.state.active:
                time.sleep(0.001)
            elapsed = (time.perf_counter() - start) * 1000
            STOP.set()
        app.close()
    return elapsed


def revoked_memory(n: int = 100_000) -> tuple[int, int]:
    gc.collect()
    tracemalloc.start()
    state = WorkerState()
    for i in range(n):
        state.revoked.add(str(uuid.UUID(int=i)))
    gc.collect()
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return len(state.revoked), current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--transports", default="memory,sqlite,redis")
    args = parser.parse_args()
    transports = [t for t in args.transports.split(",") if t != "redis" or redis_up()]
    print("inspect ping round trip, 3 workers (one with every pool slot busy), limit=3:")
    for transport in transports:
        median, p90 = ping_round_trip(transport, args.pings)
        print(f"  {transport:<7} median {median:7.2f} ms   p90 {p90:7.2f} ms   ({args.pings})")
    print("revoke(terminate=True) of a running task -> REVOKED and slot free:")
    for transport in transports:
        cells = [f"{pool} {terminate_latency(transport, pool):7.1f} ms"
                 for pool in ("prefork", "threads", "asyncio")]  # fmt: skip
        print(f"  {transport:<7} " + "   ".join(cells))
    count, size = revoked_memory()
    print(f"revoked set after 100,000 revokes: {count} ids kept, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
