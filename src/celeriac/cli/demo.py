"""``celeriac demo``: a worker and a client on the embedded SQLite broker, in 30 seconds.

The module is also the demo's app (``-A celeriac.cli.demo``): the worker subprocess imports
it, so the tasks below are what it runs. Broker and backend come from ``CELERIAC_*``
environment variables that the demo sets for its worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import click

from ..app import Celeriac

app = Celeriac("demo")


@app.task(name="demo.add")
def add(x: int, y: int) -> int:
    """A plain synchronous task."""
    return x + y


@app.task(name="demo.slow_square")
async def slow_square(x: int) -> int:
    """An ``async def`` task: awaits without blocking the pool slot's loop."""
    await asyncio.sleep(0.2)
    return x * x


@app.task(name="demo.flaky", bind=True, max_retries=3, default_retry_delay=0.3)
def flaky(self: Any, succeed_on: int) -> str:
    """Fails until its ``succeed_on``-th retry, retrying with a short countdown."""
    if self.request.retries < succeed_on:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries} failed"))
    return f"succeeded after {self.request.retries} retries"


@app.task(name="demo.divide")
def divide(x: float, y: float) -> float:
    """Fails with ZeroDivisionError when y is 0: the client sees that exception."""
    return x / y


@app.task(name="demo.timestamp")
def timestamp() -> float:
    """Sent with a countdown: returns when it actually ran."""
    return time.time()


def _send_all() -> list[tuple[str, Any, str]]:
    sent: list[tuple[str, Any, str]] = []
    for i in range(20):
        sent.append((f"add({i}, {i})", add.delay(i, i), f"{i + i}"))
    for i in range(1, 6):
        sent.append((f"slow_square({i})", slow_square.delay(i), f"{i * i}"))
    sent.append(("flaky(2) with retries", flaky.delay(2), "succeeded after 2 retries"))
    sent.append(("divide(1, 0)", divide.delay(1, 0), "ZeroDivisionError"))
    sent.append(
        ("timestamp() countdown=2s", timestamp.apply_async(countdown=2), "ran >= 2 s later")
    )
    return sent


def _wait(res: Any, worker: subprocess.Popen[bytes], timeout: float = 25.0) -> Any:
    """The task's result; stops early with a clear error if the worker process died."""
    from ..exceptions import ResultTimeoutError

    deadline = time.monotonic() + timeout
    while True:
        if worker.poll() is not None:
            raise click.ClickException(f"the demo worker exited with code {worker.returncode}")
        try:
            return res.get(timeout=0.5, propagate=False)
        except ResultTimeoutError:
            if time.monotonic() > deadline:
                raise


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demo's database directory.")
def demo(keep: bool) -> None:
    """Run a worker and send it a mix of tasks on the embedded SQLite broker."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="celeriac-demo-")
    url = f"sqlite:///{os.path.join(workdir, 'celeriac.db')}"
    env = {**os.environ, "CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url}
    app.conf.update(broker_url=url, result_backend=url)
    console.print(f"[bold]celeriac demo[/]: broker and results in [cyan]{url}[/]")
    cmd = [
        sys.executable,
        "-m",
        "celeriac",
        "-A",
        "celeriac.cli.demo",
        "-q",
        "worker",
        "-c",
        "2",
        "-P",
        "prefork",
        "-l",
        "warning",
        "-n",
        "demo@%h",
    ]
    worker = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    console.print(f"started worker pid {worker.pid}: [dim]{' '.join(cmd[2:])}[/]")
    try:
        sent_at = time.time()
        sent = _send_all()
        rows = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("tasks completed", total=len(sent))
            for label, res, expected in sent:
                value = _wait(res, worker)
                if label.startswith("timestamp"):
                    value = f"ran {value - sent_at:.2f} s after sending"
                rows.append((label, res.state, repr(value), expected))
                progress.advance(bar)
        table = Table(title="results")
        for col in ("task", "state", "result", "expected"):
            table.add_column(col)
        for row in rows:
            style = "green" if row[1] == "SUCCESS" else "red"
            table.add_row(row[0], f"[{style}]{row[1]}[/]", row[2], row[3])
        console.print(table)
    finally:
        app.close()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
        else:
            code = worker.returncode
        console.print(
            f"worker stopped (exit code {code}); demo took {time.monotonic() - started:.1f} s"
        )
        if not keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"kept {workdir}")
    if code != 0:
        raise SystemExit(code)
