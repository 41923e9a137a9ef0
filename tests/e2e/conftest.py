"""Fixtures for end-to-end tests (see ``support.py`` for what they provide)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_keys import delete_matching

from .support import E2E, REDIS_URL, require_redis


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    env = E2E(tmp_path)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def redis_e2e(tmp_path: Path) -> Iterator[E2E]:
    """Like ``e2e`` but broker and result store on Redis, under a key prefix of its own."""
    require_redis()
    import redis

    prefix = f"e2e{uuid.uuid4().hex[:10]}:"
    env = E2E(
        tmp_path, url=REDIS_URL, transport_options={"global_keyprefix": prefix},
        backend_options={"global_keyprefix": prefix},
    )
    try:
        yield env
    finally:
        env.close()
        client = redis.Redis.from_url(REDIS_URL)
        delete_matching(client, f"{prefix}*")
        client.close()
