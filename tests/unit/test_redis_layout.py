"""kombu's Redis wire layout, checked without a server."""

from __future__ import annotations

import base64
import json
import re
import ssl

import orjson
import pytest

pytest.importorskip("redis")

from celeriac.exceptions import ConfigurationError
from celeriac.messaging import Message
from celeriac.messaging.transports._redis_layout import (
    SEP,
    Layout,
    decode_envelope,
    encode_envelope,
    mark_redelivered,
    parse_url,
    topic_pattern,
)
from celeriac.messaging.transports._redis_options import RedisTransportOptions


@pytest.mark.parametrize(
    ("url", "expected", "db"),
    [
        ("redis://", {"host": "127.0.0.1", "port": 6379}, 0),
        ("redis://h:6380/4", {"host": "h", "port": 6380}, 4),
        ("redis://:pw@h/1", {"host": "h", "password": "pw"}, 1),
        ("redis://user:p%40ss@h", {"username": "user", "password": "p@ss"}, 0),
        ("unix:///run/redis.sock?db=3", {"unix_socket_path": "/run/redis.sock"}, 3),
        ("redis+socket:///tmp/r.sock", {"unix_socket_path": "/tmp/r.sock"}, 0),
    ],
)
def test_urls(url: str, expected: dict[str, object], db: int) -> None:
    endpoint = parse_url(url)
    assert endpoint.db == db and endpoint.kwargs["db"] == db
    for key, value in expected.items():
        assert endpoint.kwargs[key] == value


def test_tls_and_sentinel_urls() -> None:
    tls = parse_url("rediss://h:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    assert tls.kwargs["ssl"] is True
    assert tls.kwargs["ssl_cert_reqs"] == ssl.CERT_NONE
    assert tls.kwargs["ssl_ca_certs"] == "/ca.pem"
    sentinel = parse_url("sentinel://:pw@s1:26379/2;sentinel://s2:26380")
    assert sentinel.sentinels == (("s1", 26379), ("s2", 26380))
    assert sentinel.db == 2 and "host" not in sentinel.kwargs


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://h/x", "must be a number"),
        ("redis://h:notaport/0", "malformed Redis URL"),
        ("redis://h/0?timeout=3", "unknown option"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("unix://", "names no socket path"),
        ("http://h/0", "not a Redis URL"),
    ],
)
def test_bad_urls_name_the_problem(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_url(url)


def test_password_never_shows_in_url_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url("redis://user:topsecret@h/nodb")
    assert "topsecret" not in str(info.value)


def test_key_names_follow_kombu() -> None:
    layout = Layout(prefix="p:", db=3)
    assert layout.list_key("celery") == "p:celery"
    assert layout.list_key("celery", 6) == f"p:celery{SEP}6"
    assert layout.list_keys("q") == ["p:q", f"p:q{SEP}3", f"p:q{SEP}6", f"p:q{SEP}9"]
    assert [layout.step(p) for p in (-1, 0, 2, 3, 5, 6, 9, 12)] == [0, 0, 0, 3, 3, 6, 9, 9]
    assert layout.binding_key("celery") == "p:_kombu.binding.celery"
    assert layout.binding_member("rk", "", "q") == f"rk{SEP}{SEP}q"
    assert layout.parse_member(f"rk{SEP}{SEP}q") == ("rk", "", "q")
    assert layout.unacked == "p:unacked" and layout.unacked_index == "p:unacked_index"
    assert layout.fanout_channel("celeryev", "worker.heartbeat") == (
        "p:/3.celeryev/worker.heartbeat"
    )
    assert layout.fanout_channel("celery.pidbox", "") == "p:/3.celery.pidbox"
    assert layout.parse_channel("p:/3.celeryev/task.multi") == ("celeryev", "task.multi")
    assert layout.parse_channel("other") is None
    assert Layout(fanout_prefix=False).fanout_channel("ev", "") == "ev"


def test_bad_priority_steps_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="priority_steps"):
        Layout(steps=(1, 5))


@pytest.mark.parametrize(
    ("binding", "key", "matches"),
    [
        ("task.*", "task.sent", True),
        ("task.*", "task.a.b", False),
        ("#", "anything.at.all", True),
        ("worker.#", "worker.heartbeat", True),
        ("worker.#", "task.sent", False),
        ("a.b+c", "a.b+c", True),
    ],
)
def test_topic_pattern_is_the_regex_kombu_matches(binding: str, key: str, matches: bool) -> None:
    assert bool(re.match(topic_pattern(binding), key)) is matches


def test_envelope_round_trip_keeps_what_the_producer_set() -> None:
    message = Message(
        b"[[2, 3], {}, {}]",
        {"task": "t.add", "id": "42"},
        {"correlation_id": "42", "reply_to": "r", "priority": 5},
        "application/json",
        "utf-8",
    )
    raw = encode_envelope(message, "celery", "celery", "tag-1", 5)
    envelope = json.loads(raw)
    assert base64.b64decode(envelope["body"]) == message.body
    assert envelope["properties"]["delivery_info"] == {
        "exchange": "celery",
        "routing_key": "celery",
    }
    assert envelope["properties"]["delivery_tag"] == "tag-1"
    got = decode_envelope(raw, "celery", 1, None)
    assert got.body == message.body and got.headers == message.headers
    assert got.properties["correlation_id"] == "42" and got.delivery_tag == "tag-1"
    assert got.delivery_info["queue"] == "celery" and got.redelivered is False


def test_unreadable_envelope_becomes_a_message_to_quarantine() -> None:
    got = decode_envelope(b"\xffnot json", "q", 1, None)
    assert got.body == b"\xffnot json"
    assert got.content_type == "application/x-celeriac-invalid-envelope"
    assert "x-invalid-envelope" in got.headers


@pytest.mark.parametrize(
    "properties",
    [{"delivery_info": "celery", "delivery_tag": "t"}, ["delivery_tag", "t"]],
)
def test_an_envelope_with_misshapen_properties_becomes_a_message_to_quarantine(
    properties: object,
) -> None:
    raw = json.dumps({"body": "", "headers": {}, "properties": properties}).encode()
    got = decode_envelope(raw, "q", 1, None)
    assert got.body == raw
    assert got.content_type == "application/x-celeriac-invalid-envelope"
    assert "x-invalid-envelope" in got.headers


def test_decoding_leaves_only_the_producers_properties() -> None:
    message = Message(b"[]", {"task": "t", "id": "1"}, {"reply_to": "r"}, "application/json")
    got = decode_envelope(encode_envelope(message, "", "q", "tag-1", 0), "q", 1, None)
    assert "delivery_info" not in got.properties and "body_encoding" not in got.properties
    assert got.properties["reply_to"] == "r" and got.properties["delivery_tag"] == "tag-1"


def test_restore_flags_the_entry_as_kombu_does() -> None:
    raw = encode_envelope(Message(b"{}"), "ex", "rk", "tag-9", 6)
    entry = json.dumps([json.loads(raw), "ex", "rk"])
    envelope, exchange, routing_key, priority, tag = mark_redelivered(entry)
    restored = json.loads(envelope)
    assert (exchange, routing_key, priority, tag) == ("ex", "rk", 6, "tag-9")
    assert restored["headers"]["redelivered"] is True
    assert restored["properties"]["delivery_info"]["redelivered"] is True
    assert decode_envelope(envelope.encode(), "q", 1, None).redelivered is True
    with pytest.raises(ValueError):
        mark_redelivered("[1, 2]")


def test_options_accept_kombus_names_and_refuse_others() -> None:
    parsed = RedisTransportOptions.parse(
        {"visibility_timeout": 60, "global_keyprefix": "x:", "max_connections": 5,
         "body_encoding": "base64", "polling_interval": 0.5}
    )  # fmt: skip
    assert parsed.visibility_timeout == 60.0 and parsed.global_keyprefix == "x:"
    assert parsed.client["max_connections"] == 5 and parsed.polling_interval == 0.5
    assert parsed.restore_interval == 10.0
    assert RedisTransportOptions.parse({"visibility_timeout": 1}).restore_interval == 0.25
    with pytest.raises(ConfigurationError, match="did you mean 'global_keyprefix'"):
        RedisTransportOptions.parse({"global_keyprefx": "x"})
    with pytest.raises(ConfigurationError, match="must be seconds"):
        RedisTransportOptions.parse({"visibility_timeout": "soon"})
    with pytest.raises(ConfigurationError, match="base64"):
        RedisTransportOptions.parse({"body_encoding": "utf-8"})
    with pytest.raises(ConfigurationError) as info:
        RedisTransportOptions.parse({"password": 1234})
    assert "1234" not in str(info.value)


def test_fanout_subscriptions_follow_the_binding_key_as_kombu_does() -> None:
    layout = Layout(prefix="p:", db=0)
    # A wildcard key needs only the channels its words can match
    assert layout.fanout_patterns("celeryev", "worker.#") == ("p:/0.celeryev/worker.*",)
    assert layout.fanout_patterns("celeryev", "task.*") == ("p:/0.celeryev/task.*",)
    assert layout.fanout_patterns("celeryev", "#") == ("p:/0.celeryev", "p:/0.celeryev/*")
    # Glob characters of names are escaped; any other key takes the whole exchange
    assert layout.fanout_patterns("e[1]", "a.*") == ("p:/0.e\\[1\\]/a.*",)
    assert layout.fanout_patterns("bus", "plain") == ("p:/0.bus", "p:/0.bus/*")
    assert layout.fanout_patterns("bus") == ("p:/0.bus", "p:/0.bus/*")


def test_a_text_body_travels_as_a_string_that_kombu_reads_as_is() -> None:
    body = orjson.dumps([{"type": "task-started", "uuid": "é"}])
    message = Message(body, {"hostname": "w@h"}, {"delivery_mode": 1}, "application/json", "utf-8")
    raw = encode_envelope(message, "celeryev", "task.multi", "tag", 0, text_body=True)
    envelope = orjson.loads(raw)
    # no body_encoding: kombu takes the body string as the serialized payload
    assert "body_encoding" not in envelope["properties"]
    assert envelope["body"] == body.decode("utf-8")
    assert decode_envelope(raw, "q", 1, None).body == body


def test_a_body_that_is_not_utf8_text_stays_base64() -> None:
    message = Message(b"\xff\xfe", {}, {}, "application/json", "utf-8")
    raw = encode_envelope(message, "celeryev", "task.multi", "tag", 0, text_body=True)
    assert orjson.loads(raw)["properties"]["body_encoding"] == "base64"
    assert decode_envelope(raw, "q", 1, None).body == b"\xff\xfe"
