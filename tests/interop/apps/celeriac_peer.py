"""The celeriac app the interop tests run as ``celeriac -A celeriac_peer worker``.

Its task names and behaviour match ``celery_peer`` so either kind of worker can serve any
client. Settings come from ``INTEROP_*`` variables (see ``peer_common``).
"""

from __future__ import annotations

import time
from typing import Any

from peer_common import InteropError, count_run, now, record_order, settings

from celeriac import Celeriac

app = Celeriac("celeriac-peer", **settings())


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
    """When it ran, and where the message came from."""
    info = dict(self.request.delivery_info or {})
    return {"at": now(), "routing_key": info.get("routing_key"), "worker": "celeriac"}


@app.task(name="interop.order", ignore_result=False)
def order(label: str) -> str:
    record_order(label)
    return label


@app.task(name="interop.count", bind=True)
def count(self: Any, pause: float = 0.0) -> str:
    count_run(self.request.id)
    if pause:
        time.sleep(pause)
    return "celeriac"


@app.task(name="interop.count_late", bind=True, acks_late=True)
def count_late(self: Any, pause: float = 0.0) -> str:
    """``interop.count``, acknowledged only after it returns."""
    count_run(self.request.id)
    if pause:
        time.sleep(pause)
    return "celeriac"
