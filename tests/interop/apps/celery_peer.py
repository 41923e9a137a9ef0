"""The Celery app the interop tests run as ``python -m celery -A celery_peer worker``.

Same task names and behaviour as ``celeriac_peer``; settings from ``INTEROP_*`` variables.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from peer_common import InteropError, count_run, now, record_order, settings

app = Celery("celery-peer", set_as_current=False)
app.conf.update(settings(), accept_content=["json"], worker_hijack_root_logger=False)
if "visibility_timeout" in app.conf.broker_transport_options:
    # kombu otherwise scans for unacked messages to restore only every ~100 s.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }


@app.task(name="interop.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.fail")
def fail(message: str, code: int) -> None:
    raise ValueError(message, code)


@app.task(name="interop.fail_custom")
def fail_custom(message: str) -> None:
    raise InteropError(message)


@app.task(name="interop.when", bind=True)
def when(self: Any) -> dict[str, Any]:
    info = dict(self.request.delivery_info or {})
    return {"at": now(), "routing_key": info.get("routing_key"), "worker": "celery"}


@app.task(name="interop.order")
def order(label: str) -> str:
    record_order(label)
    return label


@app.task(name="interop.count", bind=True)
def count(self: Any, pause: float = 0.0) -> str:
    count_run(self.request.id)
    if pause:
        time.sleep(pause)
    return "celery"


@app.task(name="interop.count_late", bind=True, acks_late=True)
def count_late(self: Any, pause: float = 0.0) -> str:
    """``interop.count``, acknowledged only after it returns."""
    count_run(self.request.id)
    if pause:
        time.sleep(pause)
    return "celery"
