"""``celeriac events --dump``, ``--camera`` and ``celeriac snapshots`` as a user runs them."""

from __future__ import annotations

import json

from .support import E2E, wait_for


def test_dump_and_camera_see_a_worker_with_task_events(e2e: E2E) -> None:
    # Given a dumper and the SQLite camera watching the broker
    dump = e2e.spawn("events", "--dump", "--timeout", "60")
    camera = e2e.spawn(
        "events", "--camera", "celeriac.events.snapshot.SQLiteCamera", "--frequency", "0.2",
        "--maxrate", "100/s", "--db", str(e2e.dir / "snaps.db"), "--timeout", "60",
    )  # fmt: skip
    wait_for(lambda: "dumping events" in dump.output(), 20, "the dumper to start")
    wait_for(lambda: "SQLiteCamera" in camera.output(), 20, "the camera to start")
    # When a worker with task events runs a task
    worker = e2e.worker("-E")
    res = e2e.client.send_task("e2e.add", (2, 3))
    assert res.get(timeout=30) == 5
    # Then the dump shows one readable line per event, the worker's and the task's
    line = wait_for(
        lambda: next(
            (ln for ln in dump.output().splitlines() if f"task-succeeded e2e.add[{res.id}]" in ln),
            None,
        ),
        20,
        "the task-succeeded line",
    )
    assert "result=5" in line and "runtime=" in line
    assert "worker-online" in dump.output()
    assert f"task-received e2e.add[{res.id}] args=(2, 3)" in dump.output()

    # And the camera's snapshots can be queried with `celeriac snapshots`
    def stored() -> dict | None:
        got = e2e.cli("snapshots", str(e2e.dir / "snaps.db"), "tasks", "--json",
                      "--state", "SUCCESS")  # fmt: skip
        rows = [json.loads(x) for x in got.stdout.splitlines()]
        return next((r for r in rows if r["uuid"] == res.id), None)

    row = wait_for(stored, 20, "the camera to store the task")
    assert (row["name"], row["state"], row["result"]) == ("e2e.add", "SUCCESS", "5")
    assert row["worker"] in worker.output()
    table = e2e.cli("snapshots", str(e2e.dir / "snaps.db"), "workers")
    assert table.returncode == 0 and "w" in table.stdout
    missing = e2e.cli("snapshots", str(e2e.dir / "nothing.db"))
    assert missing.returncode != 0 and "no snapshot file" in missing.stderr
