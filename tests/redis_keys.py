"""Cleaning up what a test wrote to a shared Redis (it outlives test runs)."""

from __future__ import annotations

from typing import Any

__all__ = ["delete_matching"]


def delete_matching(client: Any, pattern: str) -> None:
    """Delete every key matching the glob ``pattern``, a few hundred per command."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
