"""Fixtures for end-to-end tests (see ``support.py`` for what they provide)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import E2E


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    env = E2E(tmp_path)
    try:
        yield env
    finally:
        env.close()
