"""Bootsteps: resolution, order, lifecycle, consumer steps and the printed graph."""

from __future__ import annotations

import asyncio
import logging
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.exceptions import ConfigurationError
from celeriac.worker.bootsteps import (
    RUN,
    TERMINATE,
    Blueprint,
    ConsumerStep,
    CyclicDependencyError,
    StartStopStep,
    Step,
)

MODULE = __name__


class Parent:
    """A stand-in for the worker: records every hook call in order."""

    def __init__(self, user_steps: dict[str, set[Any]] | None = None) -> None:
        self.calls: list[str] = []
        self.app = SimpleNamespace(steps=user_steps or {"worker": set(), "consumer": set()})


class Recording(Step):
    """Records its hooks on the parent; sync hooks."""

    def start(self, parent: Parent) -> None:
        parent.calls.append(f"start {self.alias}")

    def close(self, parent: Parent) -> None:
        parent.calls.append(f"close {self.alias}")

    def stop(self, parent: Parent) -> None:
        parent.calls.append(f"stop {self.alias}")

    def shutdown(self, parent: Parent) -> None:
        parent.calls.append(f"shutdown {self.alias}")


class Hub(Recording):
    label = "Hub"


class Timer(Recording):
    label = "Timer"
    requires = (Hub,)


class Pool(Recording):
    label = "Pool"
    requires = (f"{MODULE}:Hub",)

    async def start(self, parent: Parent) -> None:  # async hooks are awaited
        await asyncio.sleep(0)
        parent.calls.append("start Pool")


class Consumer(Recording):
    label = "Consumer"
    requires = (f"{MODULE}.Pool", Timer)
    last = True


class WorkerBlueprint(Blueprint):
    name = "worker"
    default_steps = {f"{MODULE}:Consumer", Hub}


def labels(steps: list[Step]) -> list[str]:
    return [step.alias for step in steps]


# --- names -----------------------------------------------------------------------------


def test_step_names_default_to_module_and_class_and_can_be_set() -> None:
    class Named(Step):
        name = "custom-name"

    class Child(Named):
        pass

    assert Hub.name == f"{MODULE}:Hub"
    assert Named.name == "custom-name"
    assert Child.name.endswith("Child") and Child.name.startswith(f"{MODULE}:")
    assert Hub(None).alias == "Hub"
    assert Child(None).alias == "Child"
    assert repr(Hub(None)) == "<step: Hub>"


def test_requires_must_be_a_tuple() -> None:
    with pytest.raises(TypeError, match="requires must be a tuple"):

        class Bad(Step):
            requires = "a.b:C"  # type: ignore[assignment]


def test_a_misspelt_hook_is_warned_about() -> None:
    with pytest.warns(UserWarning, match=r"stat is not a bootstep hook; did you mean 'start'"):

        class Typo(Step):
            def stat(self, parent: Any) -> None: ...

    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Helper(Step):  # unrelated public helpers are fine
            def open_files(self) -> None: ...


# --- resolution and order ----------------------------------------------------------------


def test_apply_orders_requirements_first_pulls_missing_ones_and_puts_last_at_end() -> None:
    # Given a blueprint listing only Consumer and Hub
    bp = WorkerBlueprint().apply(Parent())
    # Then Pool and Timer are pulled in through requires, and Consumer (last) ends the order
    assert labels(bp.steps) == ["Hub", "Pool", "Timer", "Consumer"]
    assert bp[Consumer].alias == "Consumer"
    assert bp[f"{MODULE}:Timer"].alias == "Timer"


def test_user_steps_from_app_steps_join_in_dependency_order() -> None:
    class Audit(Recording):
        label = "Audit"
        requires = (Pool,)

    parent = Parent({"worker": {Audit}, "consumer": set()})
    bp = WorkerBlueprint().apply(parent)
    order = labels(bp.steps)
    assert order.index("Audit") > order.index("Pool")
    assert order[-1] == "Consumer"


def test_user_step_with_a_default_steps_name_replaces_it_everywhere() -> None:
    class FastPool(Recording):
        name = Pool.name
        label = "FastPool"
        requires = (Hub,)

    bp = WorkerBlueprint().apply(Parent({"worker": {FastPool}}))
    assert labels(bp.steps) == ["Hub", "FastPool", "Timer", "Consumer"]


def test_extra_steps_given_to_the_blueprint_are_included() -> None:
    class Extra(Recording):
        label = "Extra"

    bp = WorkerBlueprint([Extra]).apply(Parent())
    assert "Extra" in labels(bp.steps)


def test_ties_are_broken_by_name_not_by_set_order() -> None:
    made = [type(f"S{i}", (Step,), {"name": f"s{i}"}) for i in (3, 1, 2)]
    bp = Blueprint(made).apply(None)
    assert [s.name for s in bp.steps] == ["s1", "s2", "s3"]


def test_cycle_is_an_error_naming_the_loop() -> None:
    class A(Step):
        name = "A"
        requires = ("B",)

    class B(Step):
        name = "B"
        requires = ("C",)

    class C(Step):
        name = "C"
        requires = ("A",)

    class Free(Step):
        name = "Free"

    with pytest.raises(CyclicDependencyError) as info:
        Blueprint([A, B, C, Free]).apply(None)
    assert info.value.cycle == ["A", "B", "C", "A"]
    assert "A -> B -> C -> A" in str(info.value)
    assert isinstance(info.value, ConfigurationError)


def test_missing_requirement_names_the_step_and_the_requirement() -> None:
    class NeedsGhost(Step):
        name = "needs-ghost"
        requires = ("no_such_module_xyz:Ghost",)

    with pytest.raises(ConfigurationError) as info:
        Blueprint([NeedsGhost]).apply(None)
    message = str(info.value)
    assert "needs-ghost" in message and "no_such_module_xyz:Ghost" in message


def test_requirement_that_is_not_a_step_is_rejected() -> None:
    class NeedsLogging(Step):
        name = "needs-logging"
        requires = ("logging:Logger",)

    with pytest.raises(ConfigurationError, match="not a Step subclass"):
        Blueprint([NeedsLogging]).apply(None)


def test_unimportable_default_step_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no_such_module_xyz"):
        Blueprint(["no_such_module_xyz:Step"]).apply(None)


def test_two_different_steps_with_one_name_conflict() -> None:
    one = type("One", (Step,), {"name": "same"})
    two = type("Two", (Step,), {"name": "same"})
    with pytest.raises(ConfigurationError, match="two different bootsteps are named 'same'"):
        Blueprint([one, two]).apply(None)


def test_a_normal_step_cannot_require_a_last_step() -> None:
    class Early(Step):
        name = "early"
        requires = (Consumer,)

    with pytest.raises(ConfigurationError, match="marked last"):
        Blueprint([Early]).apply(Parent())


def test_steps_left_out_by_include_if_are_neither_created_nor_started() -> None:
    created: list[str] = []

    class Optional(StartStopStep):
        label = "Optional"

        def include_if(self, parent: Any) -> bool:
            return False

        def create(self, parent: Any) -> Any:
            created.append("optional")

    parent = Parent()
    bp = WorkerBlueprint([Optional]).apply(parent)
    assert "Optional" in labels(bp.order)
    assert "Optional" not in labels(bp.steps)
    assert created == []
    asyncio.run(bp.start(parent))
    assert "start Optional" not in parent.calls


def test_async_create_is_refused() -> None:
    class AsyncCreate(Step):
        async def create(self, parent: Any) -> None:  # type: ignore[override]
            pass

    with pytest.raises(TypeError, match=r"create\(\) must not be async"):
        Blueprint([AsyncCreate]).apply(None)


def _dag(draw: Any) -> tuple[list[type[Step]], list[int]]:
    n = draw(st.integers(min_value=1, max_value=8))
    classes: list[type[Step]] = []
    for i in range(n):
        reqs = draw(st.sets(st.integers(min_value=0, max_value=i - 1))) if i else set()
        last = draw(st.booleans()) and i == n - 1
        name = draw(st.sampled_from("abcdefgh")) + str(i)
        classes.append(
            type(
                f"D{i}",
                (Step,),
                {"name": name, "requires": tuple(classes[r] for r in sorted(reqs)), "last": last},
            )
        )
    listed = draw(st.lists(st.integers(min_value=0, max_value=n - 1), min_size=1, unique=True))
    return classes, listed


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_order_respects_requires_and_is_deterministic(data: st.DataObject) -> None:
    classes, listed = _dag(data.draw)
    # Given a random acyclic set of steps, some listed, the rest only required
    bp = Blueprint([classes[i] for i in listed]).apply(None)
    order = [type(s) for s in bp.steps]
    # Then every listed step and everything it needs (transitively) is present, once
    expected: set[type[Step]] = set()
    todo = [classes[i] for i in listed]
    while todo:
        cls = todo.pop()
        if cls not in expected:
            expected.add(cls)
            todo.extend(cls.requires)  # type: ignore[arg-type]
    assert set(order) == expected and len(order) == len(expected)
    # And each step comes after its requirements, last steps after all others
    position = {cls: i for i, cls in enumerate(order)}
    for cls in order:
        for req in cls.requires:
            assert position[req] < position[cls]  # type: ignore[index]
    seen_last = False
    for cls in order:
        seen_last = seen_last or cls.last
        assert cls.last or not seen_last
    # And listing the same steps in another order changes nothing
    again = Blueprint([classes[i] for i in reversed(listed)]).apply(None)
    assert [type(s) for s in again.steps] == order


# --- lifecycle ---------------------------------------------------------------------------


def test_start_in_order_close_forward_stop_in_reverse_with_callbacks() -> None:
    parent = Parent()

    async def on_stopped() -> None:
        parent.calls.append("on_stopped")

    bp = WorkerBlueprint(
        on_start=lambda: parent.calls.append("on_start"),
        on_close=lambda: parent.calls.append("on_close"),
        on_stopped=on_stopped,
    ).apply(parent)

    async def scenario() -> None:
        await bp.start(parent)
        assert bp.state == RUN and bp.human_state == "running"
        await bp.stop(parent)

    asyncio.run(scenario())
    assert parent.calls == [
        "on_start",
        "start Hub",
        "start Pool",
        "start Timer",
        "start Consumer",
        "on_close",
        "close Hub",
        "close Pool",
        "close Timer",
        "close Consumer",
        "stop Consumer",
        "stop Timer",
        "stop Pool",
        "stop Hub",
        "on_stopped",
    ]
    assert bp.state == TERMINATE


def test_stop_is_idempotent_and_a_never_started_blueprint_stops_nothing() -> None:
    parent = Parent()
    bp = WorkerBlueprint().apply(parent)

    async def scenario() -> None:
        await bp.stop(parent)
        assert bp.state == TERMINATE
        assert await bp.join(timeout=0.5)
        assert parent.calls == []
        await bp.start(parent)
        await bp.stop(parent, close=False)
        calls = list(parent.calls)
        await bp.stop(parent)
        assert parent.calls == calls

    asyncio.run(scenario())
    assert "close Hub" not in parent.calls


def test_error_in_one_stop_is_logged_and_the_others_still_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Recording):
        label = "Broken"
        requires = (Hub,)

        def stop(self, parent: Parent) -> None:
            raise RuntimeError("cannot stop")

    parent = Parent()
    bp = Blueprint([Broken, Timer]).apply(parent)

    async def scenario() -> None:
        await bp.start(parent)
        await bp.stop(parent, close=False)

    with caplog.at_level(logging.ERROR, logger="celeriac.worker.bootsteps"):
        asyncio.run(scenario())
    # Timer sorts before Broken, so Broken stops first (and fails), then Timer, then Hub
    assert parent.calls[-2:] == ["stop Timer", "stop Hub"]
    assert any("Broken" in r.getMessage() and r.exc_info for r in caplog.records)


def test_failed_start_propagates_and_stop_stops_only_what_started() -> None:
    class Fails(Recording):
        label = "Fails"
        requires = (Hub,)

        def start(self, parent: Parent) -> None:
            raise OSError("port in use")

    class After(Recording):
        label = "After"
        requires = (Fails,)

    parent = Parent()
    bp = Blueprint([After]).apply(parent)

    async def scenario() -> None:
        with pytest.raises(OSError, match="port in use"):
            await bp.start(parent)
        await bp.stop(parent, close=False)

    asyncio.run(scenario())
    assert parent.calls == ["start Hub", "stop Fails", "stop Hub"]


def test_terminate_calls_terminate_hooks_which_default_to_stop() -> None:
    class Cold(Recording):
        label = "Cold"

        def terminate(self, parent: Parent) -> None:
            parent.calls.append("terminate Cold")

    parent = Parent()
    bp = Blueprint([Cold, Hub]).apply(parent)

    async def scenario() -> None:
        await bp.start(parent)
        await bp.stop(parent, close=False, terminate=True)

    asyncio.run(scenario())
    assert parent.calls[2:] == ["terminate Cold", "stop Hub"]


def test_restart_stops_then_starts_again_but_not_while_shutting_down() -> None:
    parent = Parent()
    bp = Blueprint([Timer]).apply(parent)

    async def scenario() -> None:
        await bp.start(parent)
        parent.calls.clear()
        assert await bp.restart(parent) is True
        assert parent.calls == ["stop Timer", "stop Hub", "start Hub", "start Timer"]
        with pytest.raises(ValueError, match="restart method"):
            await bp.restart(parent, method="explode")
        await bp.stop(parent, close=False)
        parent.calls.clear()
        assert await bp.restart(parent) is False
        assert parent.calls == []

    asyncio.run(scenario())


def test_shutdown_runs_every_included_steps_shutdown_in_reverse() -> None:
    parent = Parent()
    bp = Blueprint([Timer]).apply(parent)
    asyncio.run(bp.shutdown(parent))
    assert parent.calls == ["shutdown Timer", "shutdown Hub"]


def test_stop_requested_during_a_long_start_ends_it() -> None:
    # Given a last step whose start runs until told to stop (the consumer's event loop)
    class Loop(Step):
        label = "Loop"
        last = True

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.stopped = asyncio.Event()

        async def start(self, parent: Parent) -> None:
            parent.calls.append("loop running")
            await self.stopped.wait()

        def stop(self, parent: Parent) -> None:
            parent.calls.append("stop Loop")
            self.stopped.set()

    parent = Parent()
    bp = Blueprint([Loop, Hub]).apply(parent)

    async def scenario() -> None:
        runner = asyncio.ensure_future(bp.start(parent))
        while "loop running" not in parent.calls:
            await asyncio.sleep(0)
        # When stop is requested from elsewhere
        await bp.stop(parent, close=False)
        # Then the running start returns and every started step was stopped
        await asyncio.wait_for(runner, 5)
        assert bp.state == TERMINATE
        assert bp.started == 0

    asyncio.run(scenario())
    assert parent.calls == ["start Hub", "loop running", "stop Loop", "stop Hub"]


class Service:
    """An object managed by a StartStopStep; async start, sync stop, no terminate."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def start(self) -> None:
        self.log.append("service started")

    def stop(self) -> None:
        self.log.append("service stopped")


def test_start_stop_step_drives_the_created_object() -> None:
    class Managed(StartStopStep):
        label = "Managed"

        def create(self, parent: Parent) -> Service:
            return Service(parent.calls)

        def info(self, parent: Parent) -> dict[str, Any]:
            return {"managed": True}

    parent = Parent()
    bp = Blueprint([Managed]).apply(parent)

    async def scenario() -> None:
        await bp.start(parent)
        await bp.stop(parent, terminate=True)  # no terminate(): falls back to stop()

    asyncio.run(scenario())
    assert parent.calls == ["service started", "service stopped"]
    assert bp.info(parent) == {"managed": True}
    assert isinstance(bp[Managed].obj, Service)  # type: ignore[attr-defined]


def test_start_stop_step_without_an_object_does_nothing() -> None:
    parent = Parent()
    bp = Blueprint([StartStopStep]).apply(parent)

    async def scenario() -> None:
        await bp.start(parent)
        await bp.stop(parent)

    asyncio.run(scenario())
    assert bp.state == TERMINATE


# --- consumer steps ----------------------------------------------------------------------


class FakeConnection(Step):
    """Stands in for the consumer blueprint's Connection step."""

    label = "Connection"

    def start(self, parent: Any) -> None:
        parent.connection = f"connection-{len(parent.consumers) // 2 + 1}"


class RecordingConsumer:
    """Implements the consumer interface ConsumerStep uses: run, stop, close."""

    def __init__(self, connection: str, log: list[str]) -> None:
        self.connection = connection
        self.log = log
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self.log.append(f"run on {self.connection}")
        await self._stop.wait()
        self.log.append("run returned")

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        self.log.append("closed")


class Listener(ConsumerStep):
    label = "Listener"
    requires = (FakeConnection,)

    def get_consumers(self, parent: Any) -> list[RecordingConsumer]:
        made = [RecordingConsumer(parent.connection, parent.calls) for _ in range(2)]
        parent.consumers.extend(made)
        return made


def test_consumer_step_runs_its_consumers_and_stops_and_closes_them() -> None:
    parent = Parent()
    parent.consumers = []  # type: ignore[attr-defined]
    bp = Blueprint([Listener]).apply(parent)

    async def scenario() -> None:
        await bp.start(parent)
        await asyncio.sleep(0)
        assert parent.calls == ["run on connection-1"] * 2
        # A restart (connection lost) gets fresh consumers for the new connection
        await bp.restart(parent)
        await asyncio.sleep(0)
        assert (
            parent.calls[2:] == ["run returned"] * 2 + ["closed"] * 2 + ["run on connection-2"] * 2
        )
        await bp.stop(parent)

    asyncio.run(scenario())
    assert parent.calls[-4:] == ["run returned"] * 2 + ["closed"] * 2


def test_consumer_step_that_ignores_stop_is_cancelled_after_the_timeout() -> None:
    class Stubborn(RecordingConsumer):
        def stop(self) -> None:  # never tells run() to return
            self.log.append("asked to stop")

    class SlowListener(ConsumerStep):
        requires = ()
        stop_timeout = 0.05

        def get_consumers(self, parent: Any) -> list[RecordingConsumer]:
            return [Stubborn("c", parent.calls)]

    parent = Parent()
    bp = Blueprint([SlowListener]).apply(parent)

    async def scenario() -> None:
        await bp.start(parent)
        await asyncio.sleep(0)
        await bp.stop(parent)

    asyncio.run(scenario())
    assert parent.calls == ["run on c", "asked to stop", "closed"]


def test_consumer_step_without_get_consumers_fails_at_start() -> None:
    class Empty(ConsumerStep):
        requires = ()

    parent = Parent()
    bp = Blueprint([Empty]).apply(parent)
    with pytest.raises(NotImplementedError, match="must define get_consumers"):
        asyncio.run(bp.start(parent))


def test_consumer_step_requires_the_consumer_connection_step_by_default() -> None:
    assert ConsumerStep.requires == ("celeriac.worker.consumer.steps:Connection",)


# --- showing -----------------------------------------------------------------------------


def test_format_graph_lists_the_boot_order_with_requirements() -> None:
    class Skipped(Recording):
        label = "Skipped"
        enabled = False

    bp = WorkerBlueprint([Skipped]).apply(Parent())
    text = bp.format_graph()
    lines = text.splitlines()
    assert lines[0] == "Blueprint 'worker': 4 steps in boot order"
    assert lines[1].startswith("   1. Hub")
    assert "   4. Consumer  [last]  requires: Pool, Timer" in text
    assert "Skipped  [not included]" in text


def test_format_graph_works_before_apply() -> None:
    text = WorkerBlueprint().format_graph()
    assert "Consumer  [last]" in text


def test_to_dot_draws_nodes_and_requirement_edges() -> None:
    dot = WorkerBlueprint().apply(Parent()).to_dot()
    assert dot.startswith('digraph "worker" {')
    assert f'"{MODULE}:Timer" -> "{MODULE}:Hub";' in dot
    assert f'"{MODULE}:Consumer" [label="Consumer", style=bold];' in dot
    assert dot.rstrip().endswith("}")


def test_repr_shows_name_size_and_state() -> None:
    bp = WorkerBlueprint().apply(Parent())
    assert repr(bp) == "<WorkerBlueprint 'worker': 4 steps, initializing>"
