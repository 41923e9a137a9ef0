"""The app the end-to-end tests' worker subprocesses import (``-A e2eapp``).

Broker and result backend come from ``CELERIAC_*`` environment variables set by the test.
Tasks that the tests count write one line per event to a per-process ledger file in
``$E2E_LEDGER_DIR``: one ``os.write`` on an ``O_APPEND`` descriptor, so a line is in the
kernel's page cache the moment the call returns and survives a SIGKILL of the process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celeriac import Celeriac

app = Celeriac("e2e")

_visibility = os.environ.get("E2E_VISIBILITY_TIMEOUT")
if _visibility:
    app.conf.broker_transport_options = {
        **(app.conf.broker_transport_options or {}),
        "visibility_timeout": float(_visibility),
    }

_ledger_lock = threading.Lock()
_ledger: dict[int, int] = {}


def _ledger_fd() -> int:
    """This process's ledger descriptor, opened again after a fork (prefork children)."""
    pid = os.getpid()
    fd = _ledger.get(pid)
    if fd is None:
        with _ledger_lock:
            fd = _ledger.get(pid)
            if fd is None:
                directory = os.environ["E2E_LEDGER_DIR"]
                path = os.path.join(directory, f"{pid}.log")
                fd = _ledger[pid] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return fd


def record(event: str, task_id: str | None) -> None:
    """Append ``event task_id pid time`` to the ledger."""
    os.write(_ledger_fd(), f"{event} {task_id} {os.getpid()} {time.time():.6f}\n".encode())


@app.task(name="e2e.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="e2e.mark", bind=True, ignore_result=True)
def mark(self: Any) -> None:
    """Counted by the no-loss test: one ledger line per execution."""
    record("done", self.request.id)


@app.task(name="e2e.sleepy", bind=True)
def sleepy(self: Any, seconds: float) -> float:
    """Acked early (the default): records its start, sleeps, records its end."""
    record("started", self.request.id)
    time.sleep(seconds)
    record("finished", self.request.id)
    return seconds


@app.task(name="e2e.sleepy_late", bind=True, acks_late=True)
def sleepy_late(self: Any, seconds: float) -> float:
    """Acked after it returns: a worker killed meanwhile leaves it to be redelivered."""
    record("started", self.request.id)
    time.sleep(seconds)
    record("finished", self.request.id)
    return seconds
