"""Celery and celeriac side by side on one Redis: worker subprocesses and in-process clients.

:class:`Peers` gives one test a namespace of its own on Redis database 14 (a unique
``global_keyprefix`` shared by broker keys, result keys and the counters the peer tasks
write), starts ``celeriac worker`` and ``celery worker`` subprocesses on it (apps in
``apps/``, configured through ``INTEROP_*`` variables), hands out a Celery and a celeriac
client on the same namespace, and on close kills every subprocess's process group and
deletes every key under the prefix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import redis

from celeriac import Celeriac, states
from tests.e2e.support import Process, kill_all, wait_for
from tests.redis_keys import delete_matching

#: Directory of the peer app modules (``-A celeriac_peer`` / ``-A celery_peer``).
APPS_DIR = Path(__file__).resolve().parent / "apps"
#: Redis database the interop tests use (the integration tests use 15).
URL = "redis://127.0.0.1:6379/14"

if str(APPS_DIR) not in sys.path:
    # The test process imports ``peer_common`` too, so that Celery's client rebuilds the
    # peers' ``InteropError`` as the real class (it looks the module up in sys.modules).
    sys.path.insert(0, str(APPS_DIR))


class Peers:
    """One test's namespace on Redis and the processes and clients using it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.prefix = f"ix{uuid.uuid4().hex[:10]}:"
        self.redis = redis.Redis.from_url(URL)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERIAC_", "CELERY_"))}
        path = [str(APPS_DIR), env.get("PYTHONPATH", "")]
        env.update(
            INTEROP_BROKER_URL=URL,
            INTEROP_BACKEND_URL=URL,
            INTEROP_PREFIX=self.prefix,
            PYTHONPATH=os.pathsep.join(p for p in path if p),
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.processes: list[Process] = []
        self._celeriac: Celeriac | None = None
        self._celery: Any = None
        self._count = 0

    # -- settings ------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {
            "broker_url": URL,
            "result_backend": URL,
            "broker_transport_options": {"global_keyprefix": self.prefix},
            "result_backend_transport_options": {"global_keyprefix": self.prefix},
        }

    # -- clients -------------------------------------------------------------------------

    @property
    def celeriac(self) -> Celeriac:
        """A celeriac client app on this namespace (registers no tasks)."""
        if self._celeriac is None:
            self._celeriac = Celeriac(
                "interop-client", set_as_current=False, environ={}, **self.settings()
            )
        return self._celeriac

    @property
    def celery(self) -> Any:
        """A Celery 5 client app on this namespace."""
        if self._celery is None:
            import celery

            app = celery.Celery("interop-client", set_as_current=False)
            app.conf.update(self.settings(), accept_content=["json"])
            self._celery = app
        return self._celery

    # -- worker subprocesses -------------------------------------------------------------

    def _spawn(self, cmd: list[str], node: str, env: dict[str, str] | None) -> Process:
        self._count += 1
        log_path = self.dir / f"{node}-{self._count}.log"
        env = {**self.env, **(env or {}), "INTEROP_NODE": node}
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                cmd, cwd=self.dir, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        proc = Process(popen, log_path, cmd)
        self.processes.append(proc)
        return proc

    def probe_queue(self, node: str) -> str:
        """A queue only the ``node`` worker consumes, used to see that it is ready."""
        return f"probe-{node}"

    def celeriac_worker(
        self, *queues: str, pool: str = "threads", concurrency: int = 2,
        extra: tuple[str, ...] = (), node: str = "celeriac", ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> Process:
        """``celeriac -A celeriac_peer worker``; returns once it ran a first task."""
        names = [*queues, self.probe_queue(node)]
        cmd = [
            sys.executable, "-m", "celeriac", "-A", "celeriac_peer", "worker", "-P", pool,
            "-c", str(concurrency), "-Q", ",".join(names), "-n", f"{node}{self._count}@%h",
            "-l", "info", *extra,
        ]
        proc = self._spawn(cmd, node, env)
        if ready:
            self.wait_ready(proc, node)
        return proc

    def celery_worker(
        self, *queues: str, pool: str = "solo", concurrency: int = 1,
        extra: tuple[str, ...] = (), node: str = "celery", ready: bool = True,
        env: dict[str, str] | None = None, cluster: bool = False,
    ) -> Process:
        """``python -m celery -A celery_peer worker``; returns once it ran a first task.

        ``cluster=True`` keeps Celery's mingle, gossip and heartbeat on.
        """
        names = [*queues, self.probe_queue(node)]
        solitary = () if cluster else (
            "--without-mingle", "--without-gossip", "--without-heartbeat"
        )
        cmd = [
            sys.executable, "-m", "celery", "-A", "celery_peer", "worker", "-P", pool,
            "-c", str(concurrency), "-Q", ",".join(names), "-n", f"{node}{self._count}@%h",
            *solitary, "-l", "info", *extra,
        ]
        proc = self._spawn(cmd, node, env)
        if ready:
            self.wait_ready(proc, node)
        return proc

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a short command (``celery ...``/``celeriac ...``) in this namespace."""
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=self.dir, env=self.env, capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, proc: Process, node: str, timeout: float = 30.0) -> None:
        """A worker is ready once it ran a task sent to its own probe queue."""
        res = self.celeriac.send_task("interop.add", (0, 0), queue=self.probe_queue(node))

        def done() -> bool:
            if not proc.alive():
                code = proc.popen.returncode
                raise AssertionError(f"{node} worker exited ({code}) before ready:\n{proc.tail()}")
            return res.state == states.SUCCESS

        wait_for(done, timeout, f"the {node} worker (pid {proc.pid}) to run a first task", 0.1)

    # -- what the peer tasks recorded ----------------------------------------------------

    def runs(self, task_ids: list[str]) -> dict[str, int]:
        """How many times each task id was executed (0 = never)."""
        values = self.redis.mget([f"{self.prefix}runs:{t}" for t in task_ids])
        return {t: int(v or 0) for t, v in zip(task_ids, values, strict=True)}

    def ran_on(self, node: str) -> set[str]:
        return {m.decode() for m in self.redis.smembers(f"{self.prefix}ran-on:{node}")}

    def order(self) -> list[str]:
        return [m.decode() for m in self.redis.lrange(f"{self.prefix}order", 0, -1)]

    def broker_keys(self) -> list[str]:
        """Every key under the namespace, minus result metas and the tasks' counters."""
        found = []
        for raw in self.redis.scan_iter(match=f"{self.prefix}*", count=1000):
            key = raw.decode(errors="replace")[len(self.prefix) :]
            if not key.startswith(("celery-task-meta-", "runs:", "ran-on:", "order")):
                found.append(key)
        return sorted(found)

    def waiting(self, queue: str) -> int:
        """Messages in ``queue``'s lists (every priority step), as Flower counts them."""
        keys = [f"{self.prefix}{queue}"] + [f"{self.prefix}{queue}\x06\x16{s}" for s in (3, 6, 9)]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        return sum(pipe.execute())

    def unacked(self) -> int:
        return int(self.redis.hlen(f"{self.prefix}unacked"))

    def settled(self, *queues: str, timeout: float = 5.0) -> None:
        """Wait until ``queues`` are empty and nothing is unacked (acks are batched, so
        they may land a moment after the results)."""

        def done() -> bool:
            return self.unacked() == 0 and all(self.waiting(q) == 0 for q in queues)

        try:
            wait_for(done, timeout, "queues to empty and every message to be acked")
        except AssertionError:
            waiting = {q: self.waiting(q) for q in queues}
            raise AssertionError(f"waiting={waiting} unacked={self.unacked()}") from None

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        kill_all(self.processes)
        if self._celeriac is not None:
            self._celeriac.close()
        if self._celery is not None:
            self._celery.close()
        delete_matching(self.redis, f"{self.prefix}*")
        self.redis.close()
