"""Raw transport throughput: enqueue (batches of 1 and 100) and drain (fetch + ack).

Measures the transports alone, without the app or the worker, so a change in the hot
path of a transport shows up here first. Prints one table; the median of ``--runs`` runs.

    python bench/transport.py            # N = 20000 messages per run
    python bench/transport.py -n 5000 --transports sqlite --sqlite-synchronous NORMAL
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from celeriac.messaging import Message, Queue
from celeriac.messaging.transports import get_transport_cls
from celeriac.messaging.transports.base import Outgoing, Transport

#: Body of every benchmark message: about the size of a small protocol v2 task body.
BODY = b'[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
HEADERS = {"lang": "py", "task": "bench.add", "retries": 0, "root_id": None, "parent_id": None}


def make_batch(queue: str, size: int) -> list[Outgoing]:
    return [
        Outgoing(Message(BODY, {**HEADERS, "id": uuid.uuid4().hex}, {}), "", queue)
        for _ in range(size)
    ]


async def enqueue(transport: Transport, queue: str, n: int, batch: int) -> float:
    batches = [make_batch(queue, min(batch, n - i)) for i in range(0, n, batch)]
    start = time.perf_counter()
    for b in batches:
        await transport.publish(b)
    return n / (time.perf_counter() - start)


async def drain(transport: Transport, queue: str, n: int, batch: int) -> float:
    await transport.publish(make_batch(queue, n))
    start = time.perf_counter()
    got = 0
    while got < n:
        messages = await transport.fetch([queue], batch, 1.0)
        if not messages:
            raise RuntimeError(f"queue {queue} ran dry after {got} of {n} messages")
        await transport.ack(messages)
        got += len(messages)
    return n / (time.perf_counter() - start)


async def measure(
    url: str,
    options: dict[str, Any],
    step: Callable[[Transport, str], Awaitable[float]],
) -> float:
    transport = get_transport_cls(url)(url, options)
    await transport.connect()
    try:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        await transport.declare_queue(Queue(queue))
        rate = await step(transport, queue)
        await transport.purge(queue)
        await transport.delete_queue(queue)
        return rate
    finally:
        await transport.close()


def median_rate(
    url_for: Callable[[], str], options: dict[str, Any], runs: int,
    step: Callable[[Transport, str], Awaitable[float]],
) -> float:  # fmt: skip
    return statistics.median(asyncio.run(measure(url_for(), options, step)) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="messages per run (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell; median shown")
    parser.add_argument(
        "--transports", nargs="+", default=["memory", "sqlite"], choices=["memory", "sqlite"]
    )
    parser.add_argument(
        "--sqlite-synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL"],
        help="sqlite durability mode (FULL: a returned publish survives power loss)",
    )  # fmt: skip
    args = parser.parse_args()
    n = args.n
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    counter = iter(range(1_000_000))

    def url_for(kind: str) -> Callable[[], str]:
        if kind == "memory":
            return lambda: f"memory://bench-{uuid.uuid4().hex}"
        return lambda: f"sqlite:///{workdir / f'bench-{next(counter)}.db'}"

    columns = [
        ("enqueue x1", lambda t, q: enqueue(t, q, n, 1)),
        ("enqueue x100", lambda t, q: enqueue(t, q, n, 100)),
        ("drain x100", lambda t, q: drain(t, q, n, 100)),
    ]
    print(f"messages/s, N={n}, median of {args.runs} runs")
    print(f"{'transport':<10}" + "".join(f"{name:>15}" for name, _ in columns))
    for kind in args.transports:
        options: dict[str, Any] = {}
        if kind == "sqlite":
            options["sqlite_synchronous"] = args.sqlite_synchronous
        cells = [median_rate(url_for(kind), options, args.runs, step) for _, step in columns]
        print(f"{kind:<10}" + "".join(f"{rate:>15,.0f}" for rate in cells), flush=True)


if __name__ == "__main__":
    main()
