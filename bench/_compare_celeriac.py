"""The celeriac app of ``compare.py``: ``celeriac -A _compare_celeriac worker`` imports it.

The same four no-op tasks as ``_compare_celery`` (two of them ``async def`` for the asyncio
pool), each counting its execution with :mod:`_redis_counter`. The harness builds its own
client with :func:`make_app`; the worker's app takes its URLs from ``BENCH_BROKER_URL`` and
``BENCH_RESULT_BACKEND``.
"""

from __future__ import annotations

import os
from typing import Any

import _redis_counter
from celeriac import Celeriac


def make_app(broker: str, backend: str, name: str = "bench-compare") -> Celeriac:
    """An app on ``broker``/``backend`` with the benchmark's tasks registered."""
    app = Celeriac(name, broker=broker, backend=backend, set_as_current=False, environ={})
    hit = _redis_counter.hit

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        hit()

    @app.task(name="bench.noop_stored")
    def noop_stored() -> None:
        hit()

    @app.task(name="bench.anoop", ignore_result=True)
    async def anoop() -> None:
        hit()

    @app.task(name="bench.anoop_stored")
    async def anoop_stored() -> None:
        hit()

    return app


def task_name(pool: str, stored: bool) -> str:
    """The task a pool runs: ``async def`` on the asyncio pool, a plain function elsewhere."""
    return ("bench.anoop" if pool == "asyncio" else "bench.noop") + ("_stored" if stored else "")


def _worker_app() -> Any:
    broker = os.environ.get("BENCH_BROKER_URL")
    if broker is None:  # imported by the harness itself: no worker app needed
        return None
    return make_app(broker, os.environ.get("BENCH_RESULT_BACKEND", broker))


app = _worker_app()
