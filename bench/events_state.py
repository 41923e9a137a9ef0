"""How fast events.State absorbs events, and how much memory a full State holds.

Feeds ``State.event`` realistic task lifecycles (task-sent, task-received, task-started,
task-succeeded, with Celery's fields, four workers, increasing clocks) and prints events
per second; then fills a State to ``max_tasks_in_memory`` finished tasks and prints the
memory it holds (tracemalloc: bytes allocated by building it, events excluded).

    python bench/events_state.py [--tasks 50000] [--max-tasks 10000]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
import uuid

from celeriac.events import State


def lifecycle(i: int, clock: int, now: float) -> list[dict]:
    task_id = str(uuid.UUID(int=i))
    worker = f"w{i % 4}@bench"
    common = {"uuid": task_id, "utcoffset": 0, "pid": 100 + i % 4}
    return [
        {**common, "type": "task-sent", "hostname": "gen1@bench", "clock": clock,
         "timestamp": now, "name": "bench.add", "args": f"({i}, 2)", "kwargs": "{}",
         "retries": 0, "eta": None, "expires": None, "queue": "celery", "exchange": "",
         "routing_key": "celery", "root_id": task_id, "parent_id": None,
         "local_received": now},
        {**common, "type": "task-received", "hostname": worker, "clock": clock + 1,
         "timestamp": now + 0.001, "name": "bench.add", "args": f"({i}, 2)", "kwargs": "{}",
         "retries": 0, "eta": None, "expires": None, "root_id": task_id, "parent_id": None,
         "local_received": now + 0.001},
        {**common, "type": "task-started", "hostname": worker, "clock": clock + 2,
         "timestamp": now + 0.002, "local_received": now + 0.002},
        {**common, "type": "task-succeeded", "hostname": worker, "clock": clock + 3,
         "timestamp": now + 0.003, "result": str(i + 2), "runtime": 0.0004,
         "local_received": now + 0.003},
    ]  # fmt: skip


def make_events(tasks: int) -> list[dict]:
    now = time.time()
    events: list[dict] = []
    for i in range(tasks):
        events.extend(lifecycle(i, 4 * i + 1, now + i * 0.0001))
    return events


def throughput(tasks: int, max_tasks: int, rounds: int = 3) -> float:
    best = 0.0
    for _ in range(rounds):
        events = make_events(tasks)
        state = State(max_tasks_in_memory=max_tasks)
        apply = state.event
        gc.collect()
        start = time.perf_counter()
        for event in events:
            apply(event)
        elapsed = time.perf_counter() - start
        best = max(best, len(events) / elapsed)
    return best


def memory(max_tasks: int) -> tuple[int, int]:
    events = make_events(max_tasks)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state = State(max_tasks_in_memory=max_tasks)
    for event in events:
        state.event(event)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(state.tasks) == max_tasks
    return held, len(state.event_heap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=50_000, help="tasks fed (4 events each)")
    parser.add_argument("--max-tasks", type=int, default=10_000, help="max_tasks_in_memory")
    args = parser.parse_args()
    rate = throughput(args.tasks, args.max_tasks)
    print(
        f"State.event: {rate:,.0f} events/s "
        f"({args.tasks * 4:,} events, {args.tasks:,} tasks, max_tasks_in_memory={args.max_tasks:,})"
    )
    held, heap = memory(args.max_tasks)
    print(
        f"State memory with {args.max_tasks:,} finished tasks (and {heap:,} heap events): "
        f"{held / 2**20:.1f} MiB, {held / args.max_tasks:,.0f} bytes per task"
    )


if __name__ == "__main__":
    main()
