"""Sending many calls of a task at once: delay_many, apply_async_many, send_many."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.testing import start_worker

from .conftest import queue_length


@pytest.fixture
def app(transport_url: str, base_options: dict[str, Any]) -> Iterator[Celeriac]:
    app = Celeriac(
        "many",
        broker=transport_url,
        backend=f"memory://{uuid.uuid4().hex}",
        broker_transport_options=base_options,
        set_as_current=False,
    )

    @app.task(name="many.add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name="many.where", bind=True)
    def where(self: Any, tag: str) -> list[Any]:
        r = self.request
        return [tag, r.delivery_info.get("routing_key"), r.id, r.root_id]

    yield app
    app.close()


def test_delay_many_sends_every_call_once_with_its_own_id(app: Celeriac) -> None:
    # Given 3,000 calls sent at once (more than one broker batch on every transport)
    results = app.tasks["many.add"].delay_many([(i, i) for i in range(3000)])
    assert len({r.id for r in results}) == 3000
    assert queue_length(app, "celery") == 3000
    # Then a worker runs each once, and each result answers its own call
    with start_worker(app, pool="threads", concurrency=4):
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(3000)]
    assert queue_length(app, "celery") == 0


def test_apply_async_many_gives_every_call_the_options(app: Celeriac) -> None:
    calls = [((f"t{i}",), None) for i in range(5)]
    results = app.tasks["many.where"].apply_async_many(calls, queue="other", priority=3)
    assert queue_length(app, "other") == 5 and queue_length(app, "celery") == 0
    with start_worker(app, queues=["other"]):
        got = [r.get(timeout=30) for r in results]
    # each call is its own root, with the arguments it was sent with
    assert got == [[f"t{i}", "other", r.id, r.id] for i, r in enumerate(results)]


def test_kwargs_and_a_router_that_looks_at_them_are_honoured(app: Celeriac) -> None:
    # Given a router that sends odd numbers elsewhere
    def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        return {"queue": "odd" if kwargs.get("y", 0) % 2 else "even"}

    app.conf.task_routes = (route,)
    calls = [((0,), {"y": i}) for i in range(10)]
    results = app.tasks["many.add"].apply_async_many(calls)
    # Then each call went where the router put it
    assert queue_length(app, "odd") == 5 and queue_length(app, "even") == 5
    with start_worker(app, queues=["odd", "even"]):
        assert [r.get(timeout=30) for r in results] == list(range(10))


def test_refusals_and_eager_mode(app: Celeriac) -> None:
    add = app.tasks["many.add"]
    with pytest.raises(ValueError, match="task_id"):
        add.apply_async_many([((1,), None)], task_id="fixed")
    with pytest.raises(TypeError, match="task args must be a list or tuple"):
        add.delay_many([(1,), "ab"])  # type: ignore[list-item]
    app.conf.task_always_eager = True
    assert [r.get() for r in add.delay_many([(1, 2), (3, 4)])] == [3, 7]


def test_a_bad_call_midway_says_which_calls_were_sent(app: Celeriac) -> None:
    # Given 2,500 good calls and then a bad one (past the first broker batches)
    calls: list[Any] = [((i,), None) for i in range(2500)] + [("not-a-tuple", None)]
    with pytest.raises(TypeError, match="task args must be a list or tuple") as info:
        app.tasks["many.add"].apply_async_many(calls)
    # Then the batches handed to the broker before the error are all there, none half
    # sent, and the error names them
    sent = info.value.sent_task_ids  # type: ignore[attr-defined]
    assert len(sent) == queue_length(app, "celery") == 2000
    assert any("first 2000 of the calls were sent" in n for n in info.value.__notes__)
