"""The Celery 5 app of ``compare.py``: ``celery -A _compare_celery worker`` imports it.

The same no-op tasks as ``_compare_celeriac`` (Celery has no ``async def`` tasks), each
counting its execution with :mod:`_redis_counter`. Celery's own defaults otherwise
(prefetch multiplier 4, early acks, JSON), so its figures are what a Celery user gets.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import _redis_counter


def make_app(broker: str, backend: str, name: str = "bench-compare") -> Celery:
    """A Celery app on ``broker``/``backend`` with the benchmark's tasks registered."""
    app = Celery(name, broker=broker, backend=backend, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    hit = _redis_counter.hit

    @app.task(name="bench.noop", ignore_result=True, shared=False)
    def noop() -> None:
        hit()

    @app.task(name="bench.noop_stored", shared=False)
    def noop_stored() -> None:
        hit()

    return app


def _worker_app() -> Any:
    broker = os.environ.get("BENCH_BROKER_URL")
    if broker is None:
        return None
    return make_app(broker, os.environ.get("BENCH_RESULT_BACKEND", broker))


app = _worker_app()
