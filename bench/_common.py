"""Shared pieces of the benchmarks: fresh brokers, worker subprocesses, counting, tables.

Nothing here measures anything by itself; ``worker.py`` decides what is timed.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Directory of the benchmark scripts; the worker subprocesses import ``_tasks`` from it.
BENCH_DIR = Path(__file__).resolve().parent


def machine() -> str:
    """One line describing where the figures were measured."""
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Scratch:
    """A temporary directory holding one run's SQLite broker and counter files."""

    def __init__(self, label: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"celeriac-bench-{label}-"))
        self.counts = self.path / "counts"
        self.counts.mkdir()
        self.url = f"sqlite:///{self.path / 'broker.db'}"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_counts(directory: Path) -> tuple[int, float, float]:
    """Executions counted by every worker process: ``(total, first time, last time)``.

    Each file is one fixed-width ``count first last`` record rewritten in place by the
    process it is named after (see ``_tasks.py``); a record caught mid-write is skipped
    and read again on the next poll.
    """
    total, first, last = 0, 0.0, 0.0
    for path in directory.iterdir():
        try:
            count_s, first_s, last_s = path.read_text().split()
            count, started, ended = int(count_s), float(first_s), float(last_s)
        except (OSError, ValueError):
            continue
        if count:
            total += count
            first = started if not first else min(first, started)
            last = max(last, ended)
    return total, first, last


@dataclass
class WorkerProcess:
    """A ``celeriac worker`` subprocess in its own process group."""

    popen: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown; the whole group is killed if it does not exit in ``timeout`` s."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
        return code


def start_worker(scratch: Scratch, pool: str, concurrency: int, *extra: str) -> WorkerProcess:
    """Start ``python -m celeriac -A _tasks worker -P pool -c concurrency`` on ``scratch``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env.update(
        CELERIAC_BROKER_URL=scratch.url,
        CELERIAC_RESULT_BACKEND=scratch.url,
        BENCH_COUNTS_DIR=str(scratch.counts),
        PYTHONPATH=os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p),
    )
    args = [sys.executable, "-m", "celeriac", "-A", "_tasks", "-q", "worker", "-P", pool,
            "-c", str(concurrency), "-l", "warning", "-n", f"bench-{pool}@%h", *extra]
    log = scratch.path / "worker.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(args, cwd=scratch.path, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    return WorkerProcess(popen, log, args)


def wait_for_count(scratch: Scratch, worker: WorkerProcess, n: int,
                   timeout: float) -> tuple[int, float, float]:
    """Poll the counter files until ``n`` executions are counted (or give up)."""
    deadline = time.monotonic() + timeout
    while True:
        total, first, last = read_counts(scratch.counts)
        if total >= n:
            return total, first, last
        if not worker.alive():
            raise RuntimeError(f"worker exited with {worker.popen.returncode}:\n{worker.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {total} of {n} executions after {timeout:.0f} s")
        time.sleep(0.01)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i and _numeric(c) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not measured
            return "-"
        return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").isdigit() or text == "-"
