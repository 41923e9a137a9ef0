"""The AMQP model without a broker: entities, routing, messages, URLs, transport lookup."""

from __future__ import annotations

import pytest

from celeriac.exceptions import ConfigurationError
from celeriac.messaging import (
    Binding,
    Exchange,
    ExchangeNotFound,
    Message,
    MessageStateError,
    Queue,
    route,
    topic_matches,
)
from celeriac.messaging.transports import TRANSPORTS, get_transport_cls
from celeriac.messaging.transports.base import mask_url
from celeriac.messaging.transports.memory import MemoryTransport
from celeriac.messaging.transports.sqlite import SQLiteTransport


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("task.succeeded", "task.succeeded", True),
        ("task.*", "task.succeeded", True),
        ("task.*", "task", False),
        ("task.*", "task.a.b", False),
        ("task.#", "task", True),
        ("task.#", "task.a.b", True),
        ("#", "anything.at.all", True),
        ("#", "", True),
        ("*.online", "worker.online", True),
        ("*.online", "worker.offline", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("#.z", "z", True),
        ("worker.#", "task.sent", False),
    ],
)
def test_topic_matching_follows_amqp(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_route_by_exchange_type_lists_each_queue_once() -> None:
    bindings = [("a", "q1"), ("b", "q2"), ("a", "q3"), ("*", "q4"), ("a", "q1")]
    assert route("direct", "a", bindings) == ["q1", "q3"]
    assert route("direct", "c", bindings) == []
    assert route("topic", "a", bindings) == ["q1", "q3", "q4"]
    assert route("fanout", "whatever", bindings) == ["q1", "q2", "q3", "q4"]


def test_queue_defaults_to_a_direct_exchange_of_its_name() -> None:
    q = Queue("celery")
    assert q.effective_exchange == Exchange("celery", "direct")
    assert q.effective_routing_key == "celery"
    assert q.all_bindings() == (Binding("celery", "celery", "celery"),)


def test_queue_on_default_exchange_has_only_extra_bindings() -> None:
    extra = Binding("celeryev", "worker.#", "q")
    assert Queue("q", Exchange("")).all_bindings() == ()
    assert Queue("q", Exchange(""), bindings=(extra,)).all_bindings() == (extra,)
    ev = Queue("q", Exchange("celeryev", "topic"), "#", bindings=(extra,))
    assert ev.all_bindings() == (Binding("celeryev", "#", "q"), extra)


def test_bad_entities_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        Queue("")
    with pytest.raises(ValueError, match="unknown exchange type 'broadcast'"):
        Exchange("x", "broadcast")  # type: ignore[arg-type]


def test_message_settles_once() -> None:
    settled: list[tuple[str, bool]] = []

    class Recorder:
        def settle_ack(self, message: Message) -> None:
            settled.append(("ack", False))

        def settle_reject(self, message: Message, requeue: bool) -> None:
            settled.append(("reject", requeue))

    m = Message(b"x", acker=Recorder(), delivery_tag="t1")
    assert not m.acknowledged
    m.requeue()
    assert m.acknowledged and m.state == "REQUEUED"
    with pytest.raises(MessageStateError, match="t1 already requeued; cannot mark it acked"):
        m.ack()
    assert settled == [("reject", True)]


def test_copy_for_publish_is_a_fresh_message_with_extra_headers() -> None:
    delivered = Message(
        b"body",
        {"id": "1"},
        {"priority": 3, "delivery_tag": "old"},
        "application/x-msgpack",
        "binary",
        delivery_tag="old",
        delivery_count=4,
        receipt=(1, 2),
    )
    copy = delivered.copy_for_publish({"x-reason": "why"})
    assert copy.body == b"body" and copy.headers == {"id": "1", "x-reason": "why"}
    assert copy.properties == {"priority": 3}
    assert (copy.content_type, copy.content_encoding) == ("application/x-msgpack", "binary")
    assert copy.delivery_tag is None and copy.receipt is None and copy.delivery_count == 0
    assert delivered.headers == {"id": "1"}


def test_priority_property_reads_message_properties() -> None:
    assert Message(b"", properties={"priority": 7}).priority == 7
    assert Message(b"").priority == 0


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@localhost:6379/0", "redis://:**@localhost:6379/0"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:**@127.0.0.1:5672//"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("sqlite:///celeriac.db", "sqlite:///celeriac.db"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_transport_lookup_by_scheme() -> None:
    assert get_transport_cls("memory://") is MemoryTransport
    assert get_transport_cls("sqlite:///x.db") is SQLiteTransport


def test_unknown_scheme_lists_the_known_ones_and_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_transport_cls("kafka://user:pw@host:9092")
    text = str(info.value)
    assert "unknown broker transport 'kafka'" in text
    # every registered scheme is listed, sorted (the list grows with the transports)
    assert f"known schemes: {', '.join(sorted(TRANSPORTS))}" in text
    assert {"amqp", "memory", "redis", "sqlite"} <= set(TRANSPORTS)
    assert "pw" not in text.replace("**", "")


def test_url_without_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="has no scheme"):
        get_transport_cls("celeriac.db")


def test_exchange_not_found_names_the_exchange_and_suggests() -> None:
    error = ExchangeNotFound("celeryevv", ["celery", "celeryev", ""])
    assert "exchange 'celeryevv' was never declared" in str(error)
    assert error.suggestion == "celeryev" and error.exchange == "celeryevv"
    assert isinstance(error, ConfigurationError) and isinstance(error, LookupError)
