"""Helpers for end-to-end tests: the ``celeriac`` command run as real subprocesses.

Every test gets its own SQLite broker and result store in ``tmp_path``, a ledger directory
the test app writes to (see ``apps/e2eapp.py``), and an :class:`E2E` helper that starts
``python -m celeriac ...`` with the right environment. Each long-running subprocess gets
its own session (process group), so a test can SIGKILL a worker together with its pool
children, and teardown kills whatever is still running, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from celeriac import Celeriac, states
from celeriac.utils import portal

T = TypeVar("T")

#: Directory holding the app modules the worker subprocesses import with ``-A``.
APPS_DIR = Path(__file__).resolve().parent / "apps"
#: Name of the default task queue.
DEFAULT_QUEUE = "celery"
#: Redis database the Redis-backed end-to-end tests use (each test under its own prefix).
REDIS_URL = "redis://127.0.0.1:6379/14"


def require_redis() -> None:
    """Skip (or, under CI=true, fail) unless Redis answers on 127.0.0.1:6379."""
    import pytest

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        reason = "redis not reachable on 127.0.0.1:6379"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class LedgerEntry:
    event: str
    task_id: str
    pid: int
    at: float


class Ledger:
    """What the test app's tasks recorded, read back from its per-process files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def entries(self) -> list[LedgerEntry]:
        found: list[LedgerEntry] = []
        for path in sorted(self.directory.glob("*.log")):
            for line in path.read_text().splitlines():
                event, task_id, pid, at = line.split(" ")
                found.append(LedgerEntry(event, task_id, int(pid), float(at)))
        return sorted(found, key=lambda e: e.at)

    def of(self, event: str, task_id: str | None = None) -> list[LedgerEntry]:
        return [
            e for e in self.entries()
            if e.event == event and (task_id is None or e.task_id == task_id)
        ]


class Process:
    """One ``celeriac`` subprocess, its combined output going to a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, args: list[str]) -> None:
        self.popen = popen
        self.log_path = log_path
        self.args = args

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, signum: int) -> None:
        """Signal the worker's main process only (as a supervisor or a terminal would)."""
        if self.alive():
            os.kill(self.popen.pid, signum)

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        """Signal the whole process group: the worker and every pool child."""
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{' '.join(self.args)} still running after {timeout:.1f} s; output:\n{self.tail()}"
            ) from None


class E2E:
    """A broker, a result store and a ledger in one directory, and the processes using them.

    By default broker and store are one SQLite file in the directory; ``url`` and the two
    option mappings point every process (workers and the test's client) somewhere else,
    e.g. Redis under a key prefix of the test's own.
    """

    def __init__(
        self, directory: Path, url: str | None = None,
        transport_options: dict[str, Any] | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self.dir = directory
        self.url = url or f"sqlite:///{directory / 'broker.db'}"
        self.transport_options = dict(transport_options or {})
        self.backend_options = dict(backend_options or {})
        self.ledger = Ledger(directory / "ledger")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERIAC_", "E2E_"))}
        path = [str(APPS_DIR), env.get("PYTHONPATH", "")]
        env.update(
            CELERIAC_BROKER_URL=self.url,
            CELERIAC_RESULT_BACKEND=self.url,
            E2E_LEDGER_DIR=str(self.ledger.directory),
            PYTHONPATH=os.pathsep.join(p for p in path if p),
            PYTHONUNBUFFERED="1",
        )
        if self.transport_options:
            env["CELERIAC_BROKER_TRANSPORT_OPTIONS"] = json.dumps(self.transport_options)
        if self.backend_options:
            env["CELERIAC_RESULT_BACKEND_TRANSPORT_OPTIONS"] = json.dumps(self.backend_options)
        self.env = env
        self.processes: list[Process] = []
        self._client: Celeriac | None = None
        self._count = 0

    # -- subprocesses ----------------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celeriac", *args]

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run one short ``celeriac`` command to completion and capture its output."""
        return subprocess.run(
            self.command(*args), cwd=self.dir, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> Process:
        """Start a long-running ``celeriac`` command in its own process group."""
        self._count += 1
        log_path = self.dir / f"process-{self._count}.log"
        cmd = self.command(*args)
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                cmd, cwd=self.dir, env={**self.env, **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        proc = Process(popen, log_path, cmd)
        self.processes.append(proc)
        return proc

    def worker(self, *args: str, pool: str = "threads", concurrency: int = 2,
               env: dict[str, str] | None = None, app: str = "e2eapp") -> Process:
        """Start ``celeriac -A app worker`` and return once it has executed a first task."""
        self._count += 1
        proc = self.spawn(
            "-A", app, "worker", "-P", pool, "-c", str(concurrency), "-l", "info",
            "-n", f"w{self._count}@%h", *args, env=env,
        )
        self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: Process, timeout: float = 30.0) -> None:
        """A worker is ready when it ran a task: send one and wait for its result."""
        res = self.client.send_task("e2e.add", (0, 0))

        def done() -> bool:
            if not proc.alive():
                code = proc.popen.returncode
                raise AssertionError(f"worker exited ({code}) before being ready:\n{proc.tail()}")
            return res.state == states.SUCCESS

        wait_for(done, timeout, f"worker pid {proc.pid} to run a first task", interval=0.1)

    # -- the test process's own view of the broker ----------------------------------------

    @property
    def client(self) -> Celeriac:
        """An app in the test process on the same broker and store (nothing imported)."""
        if self._client is None:
            self._client = Celeriac(
                "e2e-client", broker=self.url, backend=self.url, set_as_current=False,
                environ={}, broker_transport_options=self.transport_options,
                result_backend_transport_options=self.backend_options,
            )
        return self._client

    def queue_length(self, name: str = DEFAULT_QUEUE) -> int:
        app = self.client

        async def length() -> int:
            conn = await app.get_connection()
            return await conn.transport.queue_length(name)

        return portal.run(length())

    def close(self) -> None:
        kill_all(self.processes)
        if self._client is not None:
            self._client.close()


def kill_all(processes: list[Process]) -> None:
    """SIGKILL every process group started by a test and reap the leaders."""
    for proc in processes:
        # Also after the leader exited: orphaned pool children stay in its group.
        proc.kill_group(signal.SIGKILL)
        try:
            proc.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - nothing more we can do
            pass


def report(name: str, **figures: Any) -> None:
    """Print a measured figure so it shows with ``pytest -s`` and in the captured output."""
    values = ", ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\n[e2e] {name}: {values}")
