"""Run a real worker inside a test: ``with start_worker(app): ...``.

The worker runs on its own thread and event loop in this process, so the in-memory
transport works and tests can reach into ``worker.state``. It is the same WorkController
the ``celeriac worker`` command runs, minus signal handling.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..worker.worker import WorkController

__all__ = ["start_worker", "WorkerThread"]


class WorkerThread(threading.Thread):
    """A thread running one WorkController until :meth:`stop`."""

    def __init__(self, worker: WorkController) -> None:
        super().__init__(name=f"celeriac-worker-{worker.hostname}", daemon=True)
        self.worker = worker
        self.error: BaseException | None = None
        self.exitcode: int | None = None

    def run(self) -> None:
        try:
            self.exitcode = self.worker.start()
        except BaseException as exc:
            self.error = exc
            self.worker.ready.set()

    def stop(self, cold: bool = False, timeout: float = 30.0) -> None:
        self.worker.stop(cold=cold)
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"worker {self.worker.hostname} did not stop within {timeout} s")
        if self.error is not None:
            raise self.error


@contextmanager
def start_worker(
    app: Celeriac,
    *,
    pool: str = "threads",
    concurrency: int = 2,
    queues: Sequence[str] | None = None,
    hostname: str | None = None,
    ready_timeout: float = 20.0,
    shutdown: str = "warm",
    without_mingle: bool = True,
    **kwargs: Any,
) -> Iterator[WorkController]:
    """Start a worker for ``app``, yield it once it consumes, stop it on exit.

    Mingle is off unless ``without_mingle=False``: it waits a second for peers that a
    test rarely has.
    """
    worker = app.Worker(
        without_mingle=without_mingle,
        pool=pool,
        concurrency=concurrency,
        queues=queues,
        hostname=hostname or "test@%h",
        install_signal_handlers=False,
        **kwargs,
    )
    thread = WorkerThread(worker)
    thread.start()
    if not worker.ready.wait(ready_timeout):
        thread.stop(cold=True)
        raise TimeoutError(f"worker did not start consuming within {ready_timeout} s")
    if thread.error is not None:
        thread.join(5)
        raise thread.error
    try:
        yield worker
    finally:
        thread.stop(cold=shutdown == "cold")
