"""Task ids and delivery tags: valid version-4 UUIDs, unique across forks and seeds."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable

import pytest

from celeriac.utils.ids import uuid4_hex, uuid4_str


def test_ids_are_version_4_uuids_in_both_forms() -> None:
    for _ in range(2000):
        u = uuid.UUID(uuid4_str())
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert str(u) == str(u).lower() and len(str(u)) == 36
        h = uuid4_hex()
        assert len(h) == 32 and uuid.UUID(hex=h).version == 4


def test_seeding_the_random_module_does_not_repeat_ids() -> None:
    random.seed(42)
    first = [uuid4_str() for _ in range(5)]
    random.seed(42)
    assert [uuid4_str() for _ in range(5)] != first


def _child_and_parent_ids(fork: Callable[[], int]) -> tuple[list[str], list[str]]:
    """The next five ids of a child made by ``fork``, and the parent's next five."""
    uuid4_str()  # the parent has random bytes in hand at the fork
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        os.write(w, ",".join(uuid4_str() for _ in range(5)).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 4096).decode().split(",")
    os.waitpid(pid, 0)
    os.close(r)
    return child, [uuid4_str() for _ in range(5)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    child, parent = _child_and_parent_ids(os.fork)
    assert len(child) == 5 and not set(child) & set(parent)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_without_fork_hooks_draws_other_ids() -> None:
    # uWSGI forks its workers without running Python's at-fork hooks
    import ctypes

    child, parent = _child_and_parent_ids(ctypes.CDLL(None).fork)
    assert len(child) == 5 and not set(child) & set(parent)
