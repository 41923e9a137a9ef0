"""The app the benchmark's worker subprocesses import (``-A _tasks``).

Broker and result backend come from ``CELERIAC_*`` environment variables. Every no-op task
counts itself in a per-process counter; a daemon thread per process writes the counter
(and the times of the first and the last execution) to ``$BENCH_COUNTS_DIR/<pid>`` every
few milliseconds, so the benchmark counts executions from outside the worker and the
counting costs a task one uncontended lock, never a write.
"""

from __future__ import annotations

import os
import threading
import time

from celeriac import Celeriac

app = Celeriac("bench")

#: Seconds between two writes of a process's counter file.
FLUSH_INTERVAL = 0.005
#: Width of one counter record: ``count first last`` padded, rewritten in place.
RECORD = "{:>12d} {:>18.6f} {:>18.6f}\n"


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
            self.flusher = threading.Thread(target=self._flush_forever, daemon=True)
            self.flusher.start()

    def _flush_forever(self) -> None:
        path = os.path.join(os.environ["BENCH_COUNTS_DIR"], str(os.getpid()))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        written = -1
        while True:
            with self.lock:
                count, first, last = self.count, self.first, self.last
            if count != written:
                os.pwrite(fd, RECORD.format(count, first, last).encode(), 0)
                written = count
            time.sleep(FLUSH_INTERVAL)


_counter = _Counter()


def _after_fork() -> None:
    global _counter
    _counter = _Counter()


os.register_at_fork(after_in_child=_after_fork)


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    _counter.hit()


@app.task(name="bench.noop_stored")
def noop_stored() -> None:
    _counter.hit()


@app.task(name="bench.anoop", ignore_result=True)
async def anoop() -> None:
    _counter.hit()


@app.task(name="bench.anoop_stored")
async def anoop_stored() -> None:
    _counter.hit()
