"""Task messages: what we build runs on Celery, and what Celery builds runs here."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.worker.request import Request as CeleryRequest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import compression as kombu_compression
from kombu import serialization as kombu_serialization
from kombu.message import Message as KombuMessage

from celeriac.exceptions import ContentDisallowed, DecodeError, InvalidTaskMessage
from celeriac.messaging.message import Message
from celeriac.protocol import (
    build_task_message,
    decode_task_message,
    origin_nodename,
    parse_iso8601,
)
from celeriac.serialization import compress, dumps
from celeriac.utils.saferepr import saferepr

#: The v2 headers of spec/celery-wire.md 1.3 that Celery always sends.
V2_HEADERS = {
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
}
JSON = ("json",)


@pytest.fixture(scope="module")
def celery_app():
    app = Celery("interop", set_as_current=False)

    @app.task(name="tasks.add", shared=False)
    def add(x, y):
        return x + y

    return app


def _celery_request(app, message: Message, accept=("application/json",)) -> CeleryRequest:
    """What a Celery 5 worker makes of our message (its Request parses headers and body)."""
    kombu_message = KombuMessage(
        body=message.body,
        headers=message.headers,
        properties=message.properties,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_info={"exchange": "", "routing_key": "celery"},
        accept=set(accept),
        channel=None,
    )
    return CeleryRequest(kombu_message, app=app, task=app.tasks["tasks.add"])


def _from_celery(app, serializer="json", compression=None, **options) -> Message:
    """A message exactly as a Celery client builds and kombu serializes it."""
    headers, properties, body, _ = app.amqp.as_task_v2(
        options.pop("task_id", "celery-id"), options.pop("name", "tasks.add"), **options
    )
    content_type, encoding, data = kombu_serialization.dumps(body, serializer)
    if compression:
        data, mime = kombu_compression.compress(data, compression)
        headers["compression"] = mime
    return Message(data, headers, properties, content_type, encoding)


# -- building ---------------------------------------------------------------------------------


def test_built_message_has_every_v2_header_and_celery_properties():
    message = build_task_message("tasks.add", "id-1", (2, 3), {"z": 1}, priority=5, reply_to="oid")
    assert set(message.headers) == V2_HEADERS
    assert message.headers["task"] == "tasks.add"
    assert message.headers["root_id"] == "id-1"
    assert message.headers["timelimit"] == [None, None]
    assert message.headers["argsrepr"] == "(2, 3)"
    assert message.headers["kwargsrepr"] == "{'z': 1}"
    assert message.headers["stamps"] == {}
    assert message.properties == {
        "correlation_id": "id-1", "reply_to": "oid", "delivery_mode": 2, "priority": 5,
    }
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert kombu_serialization.loads(
        message.body, message.content_type, message.content_encoding, accept=["application/json"]
    ) == [[2, 3], {"z": 1}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def test_priority_and_expiration_are_only_set_when_asked():
    message = build_task_message("t", "id")
    assert "priority" not in message.properties
    assert "expiration" not in message.properties
    assert message.properties["reply_to"] == ""


def test_times_are_iso_with_an_offset_and_expiration_is_in_milliseconds():
    eta = datetime(2030, 1, 2, 3, 4, 5)  # naive means UTC
    expires = datetime.now(UTC) + timedelta(seconds=600)
    message = build_task_message("t", "id", eta=eta, expires=expires)
    assert message.headers["eta"] == "2030-01-02T03:04:05+00:00"
    assert parse_iso8601(message.headers["expires"]) == expires
    assert 590_000 <= int(message.properties["expiration"]) <= 600_000


def test_expires_in_the_past_gives_zero_expiration():
    past = datetime.now(UTC) - timedelta(hours=1)
    assert build_task_message("t", "id", expires=past).properties["expiration"] == "0"


def test_timelimit_is_hard_then_soft():
    message = build_task_message("t", "id", time_limit=30, soft_time_limit=20)
    assert message.headers["timelimit"] == [30, 20]


def test_argsrepr_is_truncated_and_explicit_reprs_win():
    long = build_task_message("t", "id", ["x" * 5000])
    assert len(long.headers["argsrepr"]) <= 1024
    hidden = build_task_message("t", "id", ["secret"], argsrepr="(<hidden>,)", kwargsrepr="{}")
    assert hidden.headers["argsrepr"] == "(<hidden>,)"


@settings(max_examples=80, deadline=None)
@given(
    args=st.lists(
        st.integers() | st.floats() | st.booleans() | st.none() | st.text(max_size=60),
        max_size=20,
    ),
    kwargs=st.dictionaries(
        st.text(max_size=50),
        st.integers() | st.text(max_size=50) | st.lists(st.none()),
        max_size=20,
    ),
)
def test_argsrepr_is_always_the_safe_bounded_repr(args, kwargs):
    message = build_task_message("t", "id", args, kwargs)
    assert message.headers["argsrepr"] == saferepr(tuple(args), 1024)
    assert message.headers["kwargsrepr"] == saferepr(kwargs, 1024)


def test_custom_headers_are_merged_but_cannot_change_identity():
    message = build_task_message("t", "id", headers={"tenant": "acme", "task": "t"})
    assert message.headers["tenant"] == "acme"
    with pytest.raises(ValueError, match="'task'"):
        build_task_message("t", "id", headers={"task": "other"})


def test_compressed_message_names_the_mime_type():
    message = build_task_message("t", "id", ["x" * 1000], compression="zlib")
    assert message.headers["compression"] == "application/x-gzip"
    assert len(message.body) < 200


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"args": "ab"}, TypeError, "list or tuple"),
        ({"args": [], "kwargs": [("a", 1)]}, TypeError, "mapping"),
        ({"args": [], "kwargs": {1: 2}}, TypeError, "keys must be strings"),
        ({"args": [], "priority": 256}, ValueError, "0 to 255"),
        ({"args": [], "retries": -1}, ValueError, "retries"),
        ({"args": [], "eta": 12.5}, TypeError, "eta"),
        ({"args": [], "expires": "next tuesday"}, ValueError, "ISO-8601"),
    ],
)
def test_bad_arguments_are_refused_with_a_specific_error(kwargs, error, match):
    args = kwargs.pop("args")
    with pytest.raises(error, match=match):
        build_task_message("t", "id", args, **kwargs)


def test_empty_name_or_id_is_refused():
    with pytest.raises(ValueError, match="name"):
        build_task_message("", "id")
    with pytest.raises(ValueError, match="id"):
        build_task_message("t", "")


def test_origin_is_gen_pid_at_host_and_follows_fork():
    assert origin_nodename() == f"gen{os.getpid()}@{socket.gethostname()}"
    assert build_task_message("t", "id").headers["origin"] == origin_nodename()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write, origin_nodename().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 200).decode() == f"gen{pid}@{socket.gethostname()}"
    os.close(read)


# -- what Celery makes of ours ----------------------------------------------------------------


def test_celery_worker_parses_our_message(celery_app):
    eta = datetime.now(UTC) + timedelta(seconds=30)
    message = build_task_message(
        "tasks.add", "id-9", (2, 3), {}, eta=eta, expires=eta + timedelta(minutes=1),
        time_limit=10, soft_time_limit=5, parent_id="p", root_id="r", group_id="g",
        group_index=2, compression="zlib",
    )
    request = _celery_request(celery_app, message)
    assert (request.id, request.name) == ("id-9", "tasks.add")
    assert request.eta == eta
    assert request.time_limits == [10, 5]
    assert (request.args, request.kwargs) == ([2, 3], {})
    assert (request.root_id, request.parent_id, request.group_index) == ("r", "p", 2)
    assert request.argsrepr == "(2, 3)"


def test_celery_decodes_our_msgpack_body(celery_app):
    message = build_task_message("tasks.add", "id", (1, 2), serializer="msgpack")
    assert _celery_request(celery_app, message, ["application/x-msgpack"]).args == [1, 2]


# -- what we make of Celery's -----------------------------------------------------------------


def test_decode_celery_v2_message(celery_app):
    eta = datetime.now(UTC) + timedelta(seconds=30)
    chain = [{"task": "tasks.add", "args": [100], "kwargs": {}, "options": {}, "subtask_type": None,
              "immutable": False}]
    message = _from_celery(
        celery_app, args=(2, 3), kwargs={"when": datetime(2020, 1, 1, tzinfo=UTC)},
        eta=eta, expires=60, time_limit=10, soft_time_limit=5, group_id="g", group_index=1,
        chain=chain, parent_id="p", root_id="r", shadow="add-alias", ignore_result=True,
    )
    tm = decode_task_message(message, JSON)
    assert (tm.name, tm.id, tm.shadow) == ("tasks.add", "celery-id", "add-alias")
    assert tm.args == [2, 3]
    assert tm.kwargs == {"when": datetime(2020, 1, 1, tzinfo=UTC)}
    assert tm.eta == eta
    assert tm.expires is not None and tm.expires > eta
    assert (tm.time_limit, tm.soft_time_limit) == (10, 5)
    assert (tm.group_id, tm.group_index, tm.parent_id, tm.root_id) == ("g", 1, "p", "r")
    assert tm.chain == chain
    assert tm.ignore_result is True
    assert tm.origin == message.headers["origin"]
    assert tm.argsrepr == message.headers["argsrepr"]
    assert tm.headers is message.headers


@pytest.mark.parametrize("method", ["zlib", "bzip2", "lzma"])
def test_decode_celery_compressed_message(celery_app, method):
    message = _from_celery(celery_app, compression=method, args=("x" * 500,))
    assert decode_task_message(message, JSON).args == ["x" * 500]


def test_decode_celery_msgpack_message(celery_app):
    message = _from_celery(celery_app, serializer="msgpack", args=(1, "a"))
    assert decode_task_message(message, ("msgpack",)).args == [1, "a"]


def test_decode_protocol_v1_message(celery_app):
    eta = datetime.now(UTC) + timedelta(seconds=30)
    headers, properties, body, _ = celery_app.amqp.as_task_v1(
        "v1-id", "tasks.add", args=(2, 3), kwargs={"k": 1}, eta=eta, time_limit=10, group_id="g",
    )
    content_type, encoding, data = kombu_serialization.dumps(body, "json")
    tm = decode_task_message(Message(data, headers, properties, content_type, encoding), JSON)
    assert (tm.name, tm.id, tm.args, tm.kwargs) == ("tasks.add", "v1-id", [2, 3], {"k": 1})
    assert tm.eta == eta
    assert (tm.time_limit, tm.soft_time_limit, tm.group_id) == (10, None, "g")
    assert tm.root_id == "v1-id"
    assert tm.argsrepr == "(2, 3)"
    assert tm.headers["task"] == "tasks.add" and tm.headers["eta"] == eta.isoformat()


def test_v1_local_times_are_converted_when_utc_is_false():
    local = datetime(2030, 6, 1, 12, 0, 0)
    body = {"task": "t", "id": "i", "args": [], "eta": local.isoformat(), "utc": False}
    tm = decode_task_message(Message(dumps(body)[2]), JSON)
    assert tm.eta == local.astimezone(UTC)
    assert tm.eta.tzinfo is not None


def test_decode_hybrid_message_headers_win_over_body():
    body = {"args": [1], "kwargs": {"a": 2}, "task": "old.name", "retries": 4, "callbacks": [{}]}
    headers = {"task": "tasks.add", "id": "hy", "retries": 1}
    tm = decode_task_message(Message(dumps(body)[2], headers), JSON)
    assert (tm.name, tm.id, tm.retries) == ("tasks.add", "hy", 1)
    assert (tm.args, tm.kwargs, tm.callbacks) == ([1], {"a": 2}, [{}])


@settings(max_examples=40, deadline=None)
@given(
    args=st.lists(st.integers() | st.text(max_size=10) | st.none(), max_size=5),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=8), st.integers(), max_size=4),
    retries=st.integers(min_value=0, max_value=100),
    limits=st.tuples(st.none() | st.floats(1, 100), st.none() | st.floats(1, 100)),
    eta=st.none() | st.datetimes(timezones=st.just(UTC)),
)
def test_build_then_decode_round_trips(args, kwargs, retries, limits, eta):
    message = build_task_message(
        "t", "id", args, kwargs, retries=retries, time_limit=limits[0],
        soft_time_limit=limits[1], eta=eta,
    )
    tm = decode_task_message(message, JSON)
    assert (tm.args, tm.kwargs, tm.retries) == (args, kwargs, retries)
    assert (tm.time_limit, tm.soft_time_limit) == limits
    assert tm.eta == eta


# -- refusing bad input -----------------------------------------------------------------------


def test_disallowed_content_is_refused_before_decoding_with_raw_body():
    message = build_task_message("t", "id", [1], serializer="pickle", compression="zlib")
    with pytest.raises(ContentDisallowed) as info:
        decode_task_message(message, JSON)
    assert info.value.body == message.body
    assert info.value.content_type == "application/x-python-serialize"


def test_pickle_task_decodes_when_accepted():
    message = build_task_message("t", "id", [{1, 2}], serializer="pickle")
    assert decode_task_message(message, ("pickle",)).args == [{1, 2}]


def test_undecodable_body_is_a_decode_error_with_raw_body():
    message = Message(b"[[1], {}, ", {"task": "t", "id": "i"})
    with pytest.raises(DecodeError) as info:
        decode_task_message(message, JSON)
    assert not isinstance(info.value, InvalidTaskMessage)
    assert info.value.body == b"[[1], {}, "
    assert info.value.content_type == "application/json"


def test_corrupt_compression_keeps_the_original_bytes():
    message = Message(b"not zlib at all", {"task": "t", "id": "i", "compression": "zlib"})
    with pytest.raises(DecodeError) as info:
        decode_task_message(message, JSON)
    assert info.value.body == b"not zlib at all"


def test_compression_bomb_is_refused():
    mime, packed = compress(b"[[" + b"0," * 3_000_000 + b"0],{},null]", "zlib")
    message = Message(packed, {"task": "t", "id": "i", "compression": mime})
    with pytest.raises(DecodeError, match="exceeds"):
        decode_task_message(message, JSON, max_decompressed_size=1024 * 1024)
    assert len(decode_task_message(message, JSON).args) == 3_000_001


OK_BODY = [[], {}, None]


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        ({"task": "t"}, OK_BODY, "'id'"),
        ({"task": "", "id": "i"}, OK_BODY, "'task'"),
        ({"task": "t", "id": "i"}, [[], {}], "list \\[args, kwargs, embed\\]"),
        ({"task": "t", "id": "i"}, {"no": "args"}, "list \\[args, kwargs, embed\\]"),
        ({"task": "t", "id": "i"}, [{}, {}, None], "args must be a list"),
        ({"task": "t", "id": "i"}, [[], [], None], "kwargs must be a mapping"),
        ({"task": "t", "id": "i"}, [[], {}, []], "embed"),
        ({"task": "t", "id": "i"}, [[], {}, {"chain": "x"}], "chain"),
        ({"task": "t", "id": "i"}, [[], {}, {"chord": [1]}], "chord"),
        ({"task": "t", "id": "i", "eta": "soon"}, OK_BODY, "eta"),
        ({"task": "t", "id": "i", "expires": 5}, OK_BODY, "expires"),
        ({"task": "t", "id": "i", "retries": "2"}, OK_BODY, "retries"),
        ({"task": "t", "id": "i", "timelimit": [1]}, OK_BODY, "timelimit"),
        ({"task": "t", "id": "i", "timelimit": ["a", None]}, OK_BODY, "timelimit"),
        ({"task": "t", "id": "i", "group_index": "0"}, OK_BODY, "group_index"),
        ({}, OK_BODY, "no 'task' header"),
        ({}, {"id": "i", "args": []}, "no 'task' header"),
        ({}, {"task": "t", "args": []}, "'id'"),
    ],
)
def test_invalid_task_messages_are_refused_with_the_reason(headers, body, match):
    data = dumps(body)[2]
    with pytest.raises(InvalidTaskMessage, match=match) as info:
        decode_task_message(Message(data, headers), JSON)
    assert info.value.body == data
    assert info.value.content_type == "application/json"


# -- ISO-8601 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123456+02:00",
         datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_parse_iso8601(text, expected):
    parsed = parse_iso8601(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_parse_iso8601_refuses_garbage():
    with pytest.raises(ValueError, match="'tomorrow'"):
        parse_iso8601("tomorrow")


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_template_builds_what_build_task_message_builds(serializer: str) -> None:
    from celeriac.protocol import MessageTemplate

    options: dict[str, object] = {
        "priority": 3, "expires": "2030-01-01T00:00:00+00:00", "serializer": serializer,
    }  # fmt: skip
    first = build_task_message("t.add", "id-1", (1, 2), {"z": 1}, **options)  # type: ignore[arg-type]
    template = MessageTemplate(first, own_reprs=True)
    made = template.build("id-2", (3, 4), {"z": 5})
    # send_task hands build_task_message a list (build_outgoing), whatever it was given
    expected = build_task_message("t.add", "id-2", [3, 4], {"z": 5}, **options)  # type: ignore[arg-type]
    assert made.headers == expected.headers
    # "expiration" is milliseconds left until "expires", read from the clock when each
    # was built: the two may be a tick apart
    made_props, expected_props = dict(made.properties), dict(expected.properties)
    assert abs(int(made_props.pop("expiration")) - int(expected_props.pop("expiration"))) <= 1000
    assert made_props == expected_props
    assert made.content_type == expected.content_type
    assert loads_any(made.body, serializer) == loads_any(expected.body, serializer)
    assert made.delivery_tag == "id-2"


def loads_any(body: bytes, serializer: str) -> object:
    import pickle

    import orjson

    return pickle.loads(body) if serializer == "pickle" else orjson.loads(body)
