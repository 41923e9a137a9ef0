"""The app: configuration precedence, task registration, and the messages send_task builds."""

from __future__ import annotations

import asyncio
import types
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import celeriac
from celeriac import Celeriac, Celery, states
from celeriac.exceptions import AlreadyRegistered, ConfigurationError, NotRegistered, Retry
from celeriac.protocol import decode_task_message


def make_app(**kwargs: Any) -> Celeriac:
    kwargs.setdefault("broker", f"memory://{uuid.uuid4().hex}")
    kwargs.setdefault("backend", f"memory://{uuid.uuid4().hex}")
    return Celeriac("t", set_as_current=False, environ={}, **kwargs)


def test_celery_name_is_the_same_class() -> None:
    assert Celery is Celeriac
    assert {"Celeriac", "Celery", "AsyncResult", "Task", "shared_task"} <= set(celeriac.__all__)
    for name in celeriac.__all__:
        assert getattr(celeriac, name) is not None


def test_defaults_use_the_embedded_sqlite_file() -> None:
    app = Celeriac("t", set_as_current=False, environ={})
    assert app.conf.broker_url == "sqlite:///celeriac.db"
    assert app.conf.result_backend == "sqlite:///celeriac.db"


def test_unknown_setting_names_the_closest_key() -> None:
    app = make_app()
    with pytest.raises(ConfigurationError) as info:
        app.conf.update(broker_uri="memory://")
    assert info.value.suggestion == "broker_url"
    assert "broker_url" in str(info.value)


def test_precedence_explicit_then_environment_then_object() -> None:
    env = {"CELERIAC_RESULT_EXPIRES": "60", "CELERIAC_BROKER_URL": "memory://from-env"}
    app = Celeriac("t", broker="memory://explicit", environ=env, set_as_current=False)
    config = types.SimpleNamespace(
        broker_url="memory://from-object", result_expires=5, task_default_queue="q"
    )
    app.config_from_object(config)
    assert app.conf.broker_url == "memory://explicit"
    assert app.conf.result_expires == 60
    assert app.conf.task_default_queue == "q"


def test_task_decorator_with_and_without_arguments() -> None:
    app = make_app()

    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(name="custom.name", bind=True, max_retries=7)
    async def bound(self: Any) -> str:
        return self.name

    assert plain.name == f"{__name__}.test_task_decorator_with_and_without_arguments.<locals>.plain"
    assert plain(3) == 3
    assert app.tasks["custom.name"] is bound
    assert bound.is_coroutine and not plain.is_coroutine
    assert bound.max_retries == 7
    assert asyncio.run(bound()) == "custom.name"
    with pytest.raises(NotRegistered):
        app.tasks["missing"]


def test_unknown_task_option_is_an_error_with_suggestion() -> None:
    app = make_app()
    with pytest.raises(ConfigurationError) as info:

        @app.task(max_retry=3)
        def f() -> None: ...

    assert info.value.suggestion == "max_retries"


def test_two_functions_cannot_share_a_name() -> None:
    app = make_app()
    app.task(name="dup")(lambda: 1)
    with pytest.raises(AlreadyRegistered):
        app.task(name="dup")(lambda: 2)


def test_task_settings_fall_back_to_app_configuration() -> None:
    app = make_app(task_acks_late=True, task_time_limit=30)

    @app.task
    def a() -> None: ...

    @app.task(acks_late=False, time_limit=5)
    def b() -> None: ...

    assert a.acks_late and a.time_limit == 30
    assert not b.acks_late and b.time_limit == 5


def sent_message(app: Celeriac, name: str, *args: Any, **options: Any) -> Any:
    outgoing, route, task_id = app.build_outgoing(
        name, args, options.pop("kwargs", None), **options
    )
    return outgoing, route, task_id, decode_task_message(outgoing.message, ["json", "msgpack"])


def test_message_is_celery_protocol_v2() -> None:
    app = make_app()
    outgoing, _route, task_id, tm = sent_message(app, "tasks.add", 2, 3)
    headers = outgoing.message.headers
    for key in (
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
    ):
        assert key in headers, key
    assert headers["task"] == "tasks.add" and headers["id"] == task_id == headers["root_id"]
    assert headers["argsrepr"] == "(2, 3)" and headers["timelimit"] == [None, None]
    assert outgoing.message.properties["correlation_id"] == task_id
    assert outgoing.message.properties["reply_to"] == app.oid
    assert outgoing.message.content_type == "application/json"
    assert (outgoing.exchange, outgoing.routing_key) == ("", "celery")
    assert tm.args == [2, 3] and tm.kwargs == {}


def test_countdown_becomes_eta_and_a_delivery_time() -> None:
    app = make_app()
    before = datetime.now(UTC)
    outgoing, _, _, tm = sent_message(app, "t", countdown=30, expires=60)
    assert tm.eta is not None and timedelta(seconds=29) < tm.eta - before < timedelta(seconds=31)
    assert outgoing.not_before == pytest.approx(tm.eta.timestamp())
    assert tm.expires is not None and tm.expires > tm.eta
    assert outgoing.message.properties["expiration"]


def test_routing_explicit_queue_routes_and_task_queue() -> None:
    app = make_app(task_routes={"mail.*": {"queue": "mail"}, "exact.name": "exact"})

    @app.task(name="other.t", queue="own")
    def t() -> None: ...

    assert sent_message(app, "mail.send")[1].queue.name == "mail"
    assert sent_message(app, "exact.name")[1].queue.name == "exact"
    assert sent_message(app, "other.t")[1].queue.name == "own"
    assert sent_message(app, "other.t", queue="forced")[1].queue.name == "forced"
    assert sent_message(app, "anything")[1].queue.name == "celery"


def test_link_and_priority_are_carried() -> None:
    app = make_app()

    @app.task(name="cb")
    def cb(x: int) -> int:
        return x

    outgoing, _, _, tm = sent_message(app, "t", link=cb.s(1), link_error=cb.si(2), priority=7)
    assert tm.callbacks[0]["task"] == "cb" and tm.callbacks[0]["args"] == [1]
    assert tm.errbacks[0]["immutable"] is True
    assert outgoing.message.properties["priority"] == 7


def test_unknown_send_option_is_an_error() -> None:
    app = make_app()
    with pytest.raises(ConfigurationError) as info:
        app.build_outgoing("t", (), None, countdwn=3)
    assert info.value.suggestion == "countdown"


def test_retry_outside_a_worker_is_a_clear_error() -> None:
    app = make_app()

    @app.task(bind=True)
    def t(self: Any) -> None:
        self.retry()

    with pytest.raises(RuntimeError, match="outside a worker"):
        t()


def test_retry_in_eager_mode_and_max_retries() -> None:
    app = make_app()
    calls: list[int] = []

    @app.task(bind=True, max_retries=2)
    def always(self: Any) -> None:
        calls.append(self.request.retries)
        raise self.retry(exc=ValueError("nope"), countdown=10)

    result = always.apply()
    assert calls == [0, 1, 2]
    assert result.state == states.FAILURE and isinstance(result.result, ValueError)
    with pytest.raises(ValueError):
        result.get()
    assert isinstance(Retry(when=3), Exception)


@pytest.mark.parametrize(("retries", "expected"), [(0, 2.0), (1, 4.0), (2, 5.0), (6, 5.0)])
def test_autoretry_backs_off_exponentially_up_to_the_maximum(retries: int, expected: float) -> None:
    # Given a task that retries KeyError with backoff factor 2, capped at 5 s, no jitter
    app = make_app()

    @app.task(
        bind=True, autoretry_for=(KeyError,), retry_backoff=2, retry_backoff_max=5,
        retry_jitter=False, max_retries=None,
    )
    def t(self: Any) -> None:
        raise KeyError("x")

    # When attempt `retries` fails with KeyError inside a worker
    token = t.push_request({"id": "i", "retries": retries, "called_directly": False})
    try:
        with pytest.raises(Retry) as info:
            t.autoretry(KeyError("x"))
    finally:
        t.pop_request(token)
    # Then the next attempt is due after factor * 2**retries seconds, at most the maximum
    assert info.value.when == expected
    assert isinstance(info.value.exc, KeyError)


def test_autoretry_jitter_stays_within_the_backoff_and_ignores_other_errors() -> None:
    app = make_app()

    @app.task(bind=True, autoretry_for=(KeyError,), retry_backoff=True, max_retries=None)
    def t(self: Any) -> None:
        raise KeyError("x")

    token = t.push_request({"id": "i", "retries": 3, "called_directly": False})
    try:
        for _ in range(50):
            with pytest.raises(Retry) as info:
                t.autoretry(KeyError("x"))
            assert 0 <= info.value.when <= 8  # full jitter over 1 * 2**3
        assert t.autoretry(ValueError("not listed")) is None
    finally:
        t.pop_request(token)


def test_eager_propagates_when_configured() -> None:
    app = make_app(task_always_eager=True, task_eager_propagates=True)

    @app.task
    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom.delay()


def test_async_task_applies_eagerly_from_async_code() -> None:
    app = make_app()

    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def main() -> int:
        result = await double.aapply((21,))
        return await result

    assert asyncio.run(main()) == 42


def test_delay_and_adelay_publish_to_the_broker() -> None:
    app = make_app()

    @app.task(name="t.noop")
    def noop() -> None: ...

    first = noop.delay()

    async def send() -> Any:
        result = await noop.adelay()
        conn = await app.get_connection()
        length = await conn.transport.queue_length("celery")
        await app.aclose()
        return result, length

    second, length = asyncio.run(send())
    assert first.id != second.id
    assert length == 2
    app.close()
