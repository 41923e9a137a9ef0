"""events.State: the cluster rebuilt from events, whatever order they arrive in."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.events import State, Task

T0 = 1_700_000_000.0


def ev(type_: str, clock: int, uuid: str = "t1", host: str = "w1@h", **fields: Any) -> dict:
    event = {
        "type": type_,
        "uuid": uuid,
        "hostname": host,
        "clock": clock,
        "timestamp": T0 + clock,
        "utcoffset": 0,
        "pid": 1,
    }
    event.update(fields)
    return event


def lifecycle(uuid: str = "t1", retried: bool = False, outcome: str = "succeeded") -> list[dict]:
    """A task's events as a worker sends them, clocks increasing."""
    events = [
        ev("task-sent", 1, uuid, "gen1@h", name="add", args="(1, 2)", kwargs="{}", retries=0,
           queue="celery", exchange="", routing_key="celery", root_id=uuid, parent_id=None,
           eta=None, expires=None),
        ev("task-received", 2, uuid, name="add", args="(1, 2)", kwargs="{}", retries=0,
           root_id=uuid, parent_id=None, eta=None, expires=None),
        ev("task-started", 3, uuid),
    ]  # fmt: skip
    clock = 4
    if retried:
        events += [
            ev("task-retried", 4, uuid, exception="ValueError('x')", traceback="tb1"),
            ev("task-received", 5, uuid, "w2@h", name="add", args="(1, 2)", kwargs="{}",
               retries=1, root_id=uuid, parent_id=uuid, eta="2030-01-01T00:00:00+00:00",
               expires=None),
            ev("task-started", 6, uuid, "w2@h"),
        ]  # fmt: skip
        clock = 7
    host = "w2@h" if retried else "w1@h"
    if outcome == "succeeded":
        events.append(ev("task-succeeded", clock, uuid, host, result="3", runtime=0.5))
    elif outcome == "failed":
        events.append(
            ev("task-failed", clock, uuid, host, exception="KeyError('k')", traceback="tb2")
        )
    elif outcome == "revoked":
        events.append(
            ev("task-revoked", clock, uuid, host, terminated=True, signum=15, expired=False)
        )
    elif outcome == "retried":
        events.append(ev("task-retried", clock, uuid, host, exception="None", traceback="tb"))
    return events


def final(events: list[dict]) -> dict[str, Any]:
    state = State()
    for event in events:
        state.event(dict(event))
    out = {uuid: (task.as_dict(), list(task.timeline)) for uuid, task in state.tasks.items()}
    workers = {h: (w.counts, w.clock) for h, w in state.workers.items()}
    return {
        "tasks": out,
        "workers": workers,
        "by_type": {k: sorted(t.uuid for t in state.tasks_by_type[k]) for k in state.tasks_by_type},
        "by_worker": {
            k: sorted(t.uuid for t in state.tasks_by_worker[k]) for k in state.tasks_by_worker
        },
        "events": state.event_count,
        "heap": sorted(state.event_heap),
    }


OUTCOMES = st.sampled_from(["succeeded", "failed", "revoked", "retried", None])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), retried=st.booleans(), outcome=OUTCOMES)
def test_any_permutation_of_a_tasks_events_ends_in_the_same_state(
    data: st.DataObject, retried: bool, outcome: str | None
) -> None:
    # Given the events of one task's life
    events = lifecycle(retried=retried, outcome=outcome or "")
    # When they arrive in any order
    shuffled = data.draw(st.permutations(events))
    # Then the State ends exactly as if they had arrived in order
    assert final(shuffled) == final(events)


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    picks=st.lists(
        st.tuples(
            st.sampled_from(
                ["task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
                 "task-retried", "task-revoked", "task-rejected", "task-cancelled"]
            ),
            st.sampled_from(["w1@h", "w2@h"]),
            st.sampled_from(["a", "b", "c"]),
        ),
        min_size=1,
        max_size=12,
    ),
)  # fmt: skip
def test_arbitrary_event_sets_are_order_independent(data: st.DataObject, picks: list) -> None:
    # Given arbitrary events of several tasks, with distinct clocks (as a node never
    # stamps two events with one clock value)
    events = [
        ev(type_, clock, uuid, host, name=f"n-{uuid}", result=str(clock), exception=str(clock))
        for clock, (type_, host, uuid) in enumerate(picks, start=1)
    ]
    shuffled = data.draw(st.permutations(events))
    assert final(shuffled) == final(events)


def test_a_late_started_event_never_overwrites_success() -> None:
    state = State()
    state.event(ev("task-received", 1, name="add"))
    state.event(ev("task-succeeded", 3, result="3", runtime=0.1))
    task = state.event(ev("task-started", 2))
    assert isinstance(task, Task)
    assert task.state == "SUCCESS"
    assert task.started == T0 + 2  # the late event still fills in its own fields
    assert task.result == "3"


def test_retry_after_start_is_retry_and_a_new_attempt_moves_on() -> None:
    state = State()
    for event in lifecycle(retried=True, outcome="")[:4]:
        state.event(event)
    assert state.tasks["t1"].state == "RETRY"
    assert state.tasks["t1"].exception == "ValueError('x')"
    state.event(lifecycle(retried=True)[4])
    task = state.tasks["t1"]
    assert (task.state, task.retries, task.worker) == ("RECEIVED", 1, "w2@h")


def test_sent_after_received_does_not_go_back_to_pending() -> None:
    state = State()
    state.event(ev("task-received", 5, name="add"))
    state.event(ev("task-sent", 9, host="gen@h", name="add", queue="q"))
    task = state.tasks["t1"]
    assert (task.state, task.client, task.worker, task.queue) == ("RECEIVED", "gen@h", "w1@h", "q")


def test_fields_we_have_no_attribute_for_are_kept_in_extra() -> None:
    state = State()
    task = state.event(ev("task-cancelled", 2, flavour="x"))
    assert isinstance(task, Task)
    assert task.state == "CANCELLED"
    assert task.extra == {"cancelled": T0 + 2, "flavour": "x"}
    assert task.as_dict()["flavour"] == "x"


def test_children_are_linked_whichever_arrives_first() -> None:
    # Given a child whose events arrive before its parent's
    state = State()
    state.event(ev("task-received", 5, "child", name="c", parent_id="parent", root_id="parent"))
    state.event(ev("task-received", 1, "parent", name="p"))
    # And a second child after the parent
    state.event(ev("task-received", 6, "child2", name="c", parent_id="parent"))
    assert [t.uuid for t in state.children_of("parent")] == ["child", "child2"]
    parent = state.parent_of("child")
    assert parent is not None and parent.uuid == "parent"


def test_tasks_are_bounded_and_evicted_from_the_indexes() -> None:
    state = State(max_tasks_in_memory=3, max_events_in_memory=5)
    for i in range(5):
        state.event(ev("task-received", i + 1, f"t{i}", name="add"))
        state.event(ev("task-started", i + 10, f"t{i}"))
    assert list(state.tasks) == ["t2", "t3", "t4"]
    assert [t.uuid for t in state.tasks_by_type["add"]] == ["t2", "t3", "t4"]
    assert [u for u, _ in state.tasks_by_worker("w1@h", limit=2)] == ["t4", "t3"]
    assert len(state.event_heap) == 5
    assert min(state.event_heap)[0] == 10  # the oldest events fell out of the heap
    assert (state.task_count, state.event_count) == (5, 10)


def test_recently_updated_tasks_stay_when_older_ones_are_evicted() -> None:
    state = State(max_tasks_in_memory=2)
    state.event(ev("task-received", 1, "a"))
    state.event(ev("task-received", 2, "b"))
    state.event(ev("task-started", 3, "a"))  # a is now the most recently updated
    state.event(ev("task-received", 4, "c"))
    assert sorted(state.tasks) == ["a", "c"]


def test_queries_a_monitor_needs() -> None:
    state = State()
    for uuid, outcome in (("s1", "succeeded"), ("f1", "failed"), ("s2", "succeeded")):
        for event in lifecycle(uuid, outcome=outcome):
            state.event(event)
    assert [t.uuid for t in state.tasks_by_state("SUCCESS")] == ["s2", "s1"]
    assert [t.uuid for t in state.latest(2)] == ["s2", "f1"]
    assert state.state_counts() == {"SUCCESS": 2, "FAILURE": 1}
    assert [t[0] for t in state.timeline("f1")] == [
        "task-sent",
        "task-received",
        "task-started",
        "task-failed",
    ]
    assert state.worker_counters("w1@h")["task-succeeded"] == 2
    assert state.worker_counters("nobody@h") == {}
    assert state.task_types() == ["add"]
    assert len(state.tasks_by_time(limit=2)) == 2
    state.clear(ready=True)
    assert state.tasks == {}


def test_worker_liveness_follows_heartbeats_and_offline() -> None:
    joined: list[str] = []
    left: list[str] = []
    state = State(on_node_join=lambda w: joined.append(w.hostname),
                  on_node_leave=lambda w: left.append(w.hostname))  # fmt: skip
    now = time.time()
    online = {"type": "worker-online", "hostname": "w1@h", "timestamp": now, "clock": 1,
              "freq": 2.0, "active": 0, "processed": 0, "sw_ident": "py-celery"}  # fmt: skip
    worker = state.event({**online, "local_received": now})
    assert worker is not None and state.workers["w1@h"].alive
    assert joined == ["w1@h"]
    # A heartbeat older than freq * expire_window means the worker is gone
    stale = {**online, "type": "worker-heartbeat", "clock": 2, "local_received": now - 10}
    state2 = State()
    state2.event({**stale})
    assert not state2.workers["w1@h"].alive
    assert state.alive_workers()[0].hostname == "w1@h"
    state.event({**online, "type": "worker-offline", "clock": 3, "local_received": now})
    assert not state.workers["w1@h"].alive
    assert left == ["w1@h"]
    assert repr(state.workers["w1@h"]) == "<Worker w1@h OFFLINE>"


def test_an_older_worker_event_does_not_overwrite_newer_fields() -> None:
    state = State()
    base = {"type": "worker-heartbeat", "hostname": "w@h", "timestamp": T0}
    state.event({**base, "clock": 5, "active": 3})
    state.event({**base, "clock": 4, "active": 1})
    assert state.workers["w@h"].active == 3


def test_workers_are_bounded() -> None:
    state = State(max_workers_in_memory=2)
    for i in range(3):
        state.event({"type": "worker-heartbeat", "hostname": f"w{i}@h", "timestamp": T0})
    assert list(state.workers) == ["w1@h", "w2@h"]


def test_events_without_an_id_or_of_other_groups_are_counted_but_ignored() -> None:
    seen: list[str] = []
    state = State(callback=lambda s, e: seen.append(e["type"]))
    assert state.event({"type": "task-received", "hostname": "w"}) is None
    assert state.event({"type": "custom-thing"}) is None
    assert state.event_count == 2
    assert seen == ["task-received", "custom-thing"]
    assert repr(state) == "<State: events=2 tasks=0 workers=0>"
