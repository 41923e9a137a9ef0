"""Interop tests run the real ``celery`` package against celeriac over shared services.

A missing service skips the test with the reason, except under ``CI=true``, where it is a
failure (CI must prove interop), as in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

#: Service name -> port on 127.0.0.1.
SERVICE_PORTS: dict[str, int] = {"redis": 6379, "amqp": 5672}


def require_service(name: str) -> None:
    """Skip (or, under CI=true, fail) unless ``name`` answers on 127.0.0.1."""
    port = SERVICE_PORTS[name]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        reason = f"{name} not reachable on 127.0.0.1:{port}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


@pytest.fixture
def redis_service() -> None:
    """Use in tests that need Redis on 127.0.0.1:6379."""
    require_service("redis")


@pytest.fixture
def peers(redis_service: None, tmp_path: Any) -> Iterator[Any]:
    """A namespace on Redis db 14 for Celery and celeriac peers (see ``peers.py``)."""
    from .peers import Peers

    found = Peers(tmp_path)
    try:
        yield found
    finally:
        found.close()
