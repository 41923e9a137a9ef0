"""The ``celeriac`` command as a user runs it: worker, call, result, purge, demo, bad input.

Every command runs as a real subprocess (``python -m celeriac``) against a SQLite broker in
the test's directory; the test process only looks at the broker and the result store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.cli.worker import banner

from .support import E2E

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_call_then_result_wait_prints_the_return_value(e2e: E2E) -> None:
    # Given a worker for the test app, started from the command line
    worker = e2e.worker(pool="threads", concurrency=2)
    # When a task is sent with `celeriac call`
    sent = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", "[2, 3]")
    # Then it prints the task id and nothing else on stdout
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert UUID.match(task_id), sent.stdout
    # And `celeriac result --wait` prints the task's return value
    got = e2e.cli("-A", "e2eapp", "result", task_id, "--wait", "--timeout", "30")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "5"
    # And the worker's start-up banner listed the app's tasks
    assert "e2e.add" in worker.output() and "e2e.sleepy_late" in worker.output()


def test_call_to_another_queue_with_countdown_runs_on_a_worker_of_that_queue(e2e: E2E) -> None:
    # Given no worker yet, when a task is sent to queue "other" with a countdown
    before = time.time()
    sent = e2e.cli(
        "-A", "e2eapp", "call", "e2e.add", "--args", "[2, 3]", "--queue", "other",
        "--countdown", "1",
    )
    assert sent.returncode == 0, sent.stderr
    # Then the message waits in that queue, not in the default one
    assert e2e.queue_length("other") == 1 and e2e.queue_length() == 0
    # And a worker consuming both queues (-Q a,b) runs it, not before its countdown
    e2e.worker("-Q", "celery,other", pool="threads", concurrency=2)
    res = e2e.client.AsyncResult(sent.stdout.strip())
    assert res.get(timeout=30) == 5
    date_done = res.date_done
    assert date_done is not None and date_done.timestamp() >= before + 0.99
    assert e2e.queue_length("other") == 0


def test_result_of_a_failed_task_exits_non_zero(e2e: E2E) -> None:
    # Given a worker and a task that fails with a TypeError (a string plus an int)
    e2e.worker(pool="solo", concurrency=1)
    sent = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", '["a", 1]')
    assert sent.returncode == 0, sent.stderr
    # When its result is awaited from the command line
    got = e2e.cli("-A", "e2eapp", "result", sent.stdout.strip(), "--wait", "--timeout", "30")
    # Then the state and the exception are printed and the exit code says it failed
    assert got.returncode == 1
    assert "FAILURE" in got.stdout and "TypeError" in got.stdout


def test_purge_empties_the_queue_and_prints_the_count(e2e: E2E) -> None:
    # Given three messages waiting and no worker
    for i in range(3):
        sent = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", f"[{i}, {i}]")
        assert sent.returncode == 0, sent.stderr
    assert e2e.queue_length() == 3
    # When the queue is purged without confirmation
    purged = e2e.cli("-A", "e2eapp", "purge", "-f")
    # Then the command prints how many it deleted and the queue is empty
    assert purged.returncode == 0, purged.stderr
    assert "Purged 3 message(s)" in purged.stdout
    assert e2e.queue_length() == 0
    # And purging again deletes nothing
    again = e2e.cli("-A", "e2eapp", "purge", "-f")
    assert "Purged 0 message(s)" in again.stdout


def test_print_boot_graph_lists_worker_and_consumer_steps(e2e: E2E) -> None:
    # Given the test app and no worker running
    # When the worker is asked for its boot graph
    out = e2e.cli("-A", "e2eapp", "worker", "--print-boot-graph", timeout=30)
    # Then it prints both blueprints' steps and exits without starting
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for step in ("Hub", "Timer", "Queues", "Pool", "Consumer", "Connection", "Tasks", "Evloop"):
        assert re.search(rf"\b{step}\b", text), f"{step} missing from boot graph:\n{text}"
    # And the worker steps come in dependency order: the hub first, the consumer last
    worker_part = text.split("[consumer]")[0]
    assert worker_part.index("Hub") < worker_part.index("Pool") < worker_part.index("Consumer")
    assert e2e.queue_length() == 0


def test_banner_masks_the_broker_password_and_lists_tasks() -> None:
    # Given an app whose broker and backend URLs carry a password (never connected here)
    app = Celeriac(
        "bannerapp", broker="redis://admin:s3cret-pw@broker.example:6379/0",
        backend="redis://:other-pw@results.example:6379/1", set_as_current=False, environ={},
    )

    @app.task(name="bannerapp.hello")
    def hello() -> str:
        return "hi"

    # When the start-up banner is rendered for a worker of that app
    text = banner(app.Worker(pool="threads", concurrency=3, install_signal_handlers=False))
    # Then neither password appears, the URLs are shown masked, and the task is listed
    assert "s3cret-pw" not in text and "other-pw" not in text
    assert "redis://admin:**@broker.example:6379/0" in text
    assert "results.example" in text
    assert "bannerapp.hello" in text
    assert "concurrency: 3 (threads)" in text


@pytest.mark.parametrize("module", ["celeriac.cli.worker", "celeriac.cli.tasks"])
def test_each_cli_module_imports_on_its_own(module: str) -> None:
    # Given a fresh interpreter, when a subcommand module is imported first
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=30
    )
    # Then it imports (no circular import with celeriac.cli.main)
    assert proc.returncode == 0, proc.stderr


def test_unknown_app_module_is_a_clear_error(e2e: E2E) -> None:
    # Given a module name nothing on the path provides
    # When the worker is pointed at it
    out = e2e.cli("-A", "no_such_module_e2e", "worker", timeout=30)
    # Then it exits non-zero and names the module, without a traceback dump
    assert out.returncode != 0
    assert "no_such_module_e2e" in out.stderr
    assert "Traceback" not in out.stderr


def test_call_with_args_that_are_not_json_is_a_clear_error(e2e: E2E) -> None:
    # Given the test app and an empty queue
    # When `call` gets --args that is not JSON
    out = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", "[2, 3")
    # Then the command fails, says what is wrong, and nothing was sent
    assert out.returncode != 0
    assert "--args must be JSON" in out.stderr
    assert e2e.queue_length() == 0
    # And a JSON value of the wrong shape is refused as clearly
    out = e2e.cli("-A", "e2eapp", "call", "e2e.add", "--args", '{"x": 2}')
    assert out.returncode != 0
    assert "--args must be a JSON list" in out.stderr
    assert e2e.queue_length() == 0


def test_worker_with_unreachable_broker_exits_naming_the_url(e2e: E2E, tmp_path: Path) -> None:
    # Given a broker URL whose directory does not exist, and only one retry allowed
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'broker.db'}"
    env = {"CELERIAC_BROKER_URL": url, "CELERIAC_BROKER_CONNECTION_MAX_RETRIES": "1"}
    started = time.monotonic()
    # When the worker starts
    proc = e2e.spawn("-A", "e2eapp", "worker", "-P", "solo", "-c", "1", env=env)
    code = proc.wait(timeout=20)
    elapsed = time.monotonic() - started
    # Then it exits non-zero, quickly, naming the broker it could not reach
    assert code != 0, proc.tail()
    assert "missing-dir" in proc.output(), proc.tail()
    assert elapsed < 15, f"took {elapsed:.1f} s to give up"
    assert not (tmp_path / "missing-dir").exists()


@pytest.mark.slow
def test_demo_runs_to_completion(tmp_path: Path) -> None:
    # Given an empty directory and a terminal wide enough for the demo's table
    # When the demo runs (worker and client on a fresh SQLite broker)
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    proc = subprocess.run(
        [sys.executable, "-m", "celeriac", "demo"], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL, env={**env, "COLUMNS": "200"},
    )
    elapsed = time.monotonic() - started
    # Then it succeeds within its 30 s promise
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 30, f"demo took {elapsed:.1f} s"
    # And its table shows all 28 tasks: every one succeeded but the division by zero
    rows = [line for line in proc.stdout.splitlines() if line.count("│") >= 4]
    assert len(rows) == 28, proc.stdout
    assert sum("SUCCESS" in row for row in rows) == 27
    assert "succeeded after 2 retries" in proc.stdout
    assert "FAILURE" in next(row for row in rows if "divide(1, 0)" in row)
    assert "worker stopped (exit code 0)" in proc.stdout
