"""The state db keeps revoked ids (bounded, with their remaining lifetime) and the clock."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from celeriac.events import LamportClock
from celeriac.worker.state import WorkerState
from celeriac.worker.statedb import Persistent
from celeriac.worker.worker import parse_autoscale


def worker() -> SimpleNamespace:
    return SimpleNamespace(state=WorkerState(), clock=LamportClock())


def test_revoked_ids_and_clock_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "w.state"
    before = worker()
    before.state.revoked.add("old", now=time.monotonic() - 100)
    before.state.revoked.add("new")
    before.clock.adjust(41)
    Persistent(path, before).save()
    data = json.loads(path.read_text())
    assert data["clock"] == 42 and 99 < data["revoked"]["old"] < 102

    after = worker()
    assert Persistent(path, after).load() == 2
    assert {"old", "new"} <= set(after.state.revoked)
    assert after.clock.value > 42
    # the remaining lifetime is kept: "old" expires 100 s before "new"
    expires = after.state.revoked.expires
    after.state.revoked.purge(time.monotonic() + expires - 50)
    assert list(after.state.revoked) == ["new"]


def test_a_corrupt_file_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "w.state"
    path.write_text("{not json")
    assert Persistent(path, worker()).load() == 0
    assert Persistent(tmp_path / "missing", worker()).load() == 0


def test_the_revoked_set_stays_bounded() -> None:
    state = WorkerState()
    for i in range(100_000):
        state.revoked.add(f"{i:032x}")
    assert len(state.revoked) == state.revoked.maxlen == 50_000
    assert f"{99_999:032x}" in state.revoked and f"{0:032x}" not in state.revoked


def test_parse_autoscale() -> None:
    assert parse_autoscale("10,3") == (10, 3)
    assert parse_autoscale("4") == (4, 4)
    assert parse_autoscale(None) is None
    for bad in ("3,10", "a,b", "0,0", "1,2,3"):
        try:
            parse_autoscale(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")
