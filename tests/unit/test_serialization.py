"""Codecs, the accept allowlist and compression, checked against kombu's own behaviour."""

from __future__ import annotations

import decimal
import uuid
import zlib
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import compression as kombu_compression
from kombu import serialization as kombu_serialization

from celeriac import serialization
from celeriac.exceptions import ConfigurationError, ContentDisallowed, DecodeError, EncodeError
from celeriac.serialization import compress, decompress, dumps, loads

#: kombu's allowlist takes content types (Celery converts names before calling it).
JSON = ["application/json"]

TAGGED_VALUES = [
    datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2024, 5, 6, 7, 8, 9),
    date(2024, 2, 29),
    time(13, 14, 15, 500),
    decimal.Decimal("3.14159265358979323846"),
    uuid.UUID("8c1f6a2e-0a4b-4f3e-9a55-0c8b2f1e7d10"),
    b"plain ascii bytes",
    b"\xff\x00\xfe not utf-8",
]


class Trap:
    """Unpickling this would flip ``Trap.fired``: proof that pickle data was decoded."""

    fired = False

    def __reduce__(self):
        return (_fire, ())


def _fire():
    Trap.fired = True
    return "fired"


# -- JSON and kombu's type tags -------------------------------------------------------------


@pytest.mark.parametrize("value", TAGGED_VALUES, ids=repr)
def test_values_we_encode_decode_to_the_same_value_with_kombu(value):
    # Given a value JSON cannot hold natively, inside the usual task body shape
    body = [[value], {"v": value}, None]
    # When we encode it, and kombu (what a Celery worker uses) decodes it
    content_type, encoding, data = dumps(body)
    decoded = kombu_serialization.loads(data, content_type, encoding, accept=JSON)
    # Then Celery sees the same Python value
    assert (content_type, encoding) == ("application/json", "utf-8")
    assert decoded == [[value], {"v": value}, None]


@pytest.mark.parametrize("value", TAGGED_VALUES, ids=repr)
def test_values_kombu_encodes_decode_to_the_same_value_here(value):
    content_type, encoding, data = kombu_serialization.dumps({"v": [value]}, "json")
    assert loads(data, content_type, encoding) == {"v": [value]}


def test_uuid_objects_are_tagged_but_uuid_shaped_strings_stay_strings():
    # Given a task id string (UUID-shaped) next to a real UUID object
    text = str(uuid.uuid4())
    value = uuid.uuid4()
    # When encoded and decoded by kombu
    _, _, data = dumps({"id": text, "nested": [(value,)]})
    decoded = kombu_serialization.loads(data, "application/json", "utf-8", accept=JSON)
    # Then each keeps its type
    assert decoded == {"id": text, "nested": [[value]]}


def test_a_uuid_nested_as_deep_as_orjson_allows_is_still_encoded():
    # Given a UUID object at the depth orjson's own limit allows (tagging it adds two
    # levels, past that limit)
    value: object = [uuid.UUID(int=7)]
    for _ in range(252):
        value = [value]
    # Then it is encoded, tagged as kombu tags it, and decodes to the same value
    ctype, cenc, body = dumps(value, "json")
    assert loads(body, ctype, cenc) == value
    assert kombu_serialization.loads(body, ctype, cenc) == value


def test_tuples_become_lists_and_sets_are_refused_like_kombu():
    assert loads(dumps((1, (2, 3)))[2], "application/json") == [1, [2, 3]]
    with pytest.raises(kombu_serialization.EncodeError):
        kombu_serialization.dumps({1, 2}, "json")
    with pytest.raises(EncodeError, match="set"):
        dumps({"s": {1, 2}})


def test_non_string_keys_are_written_as_kombu_writes_them():
    value = {7: "int", 2.5: "float", False: "bool", None: "none", "s": "str"}
    ours = loads(dumps(value)[2], "application/json")
    theirs = kombu_serialization.loads(
        kombu_serialization.dumps(value, "json")[2], "application/json", "utf-8", accept=JSON
    )
    expected = {"7": "int", "2.5": "float", "false": "bool", "null": "none", "s": "str"}
    assert ours == theirs == expected


def test_integers_past_64_bits_survive_both_directions():
    big = [2**64, -(2**70), 10**30]
    assert loads(dumps(big)[2], "application/json") == big
    assert loads(kombu_serialization.dumps(big, "json")[2], "application/json") == big


def test_nan_written_by_celery_is_decoded():
    decoded = loads(b'[NaN, Infinity, 1]', "application/json")
    assert decoded[0] != decoded[0] and decoded[1] == float("inf") and decoded[2] == 1


def test_objects_with_a_json_hook_are_encoded_through_it():
    class Point:
        def __json__(self):
            return {"x": 1, "y": 2}

    assert loads(dumps([Point()])[2], "application/json") == [{"x": 1, "y": 2}]


def test_unknown_type_tag_is_a_decode_error_like_kombu():
    data = b'{"__type__": "complex", "__value__": "1+2j"}'
    with pytest.raises(kombu_serialization.DecodeError):
        kombu_serialization.loads(data, "application/json", "utf-8", accept=JSON)
    with pytest.raises(DecodeError, match="complex") as info:
        loads(data, "application/json")
    assert info.value.body == data


def test_text_in_another_declared_encoding_is_decoded():
    data = '{"name": "Zoë"}'.encode("utf-16")
    assert loads(data, "application/json", "utf-16") == {"name": "Zoë"}


def test_memoryview_and_str_bodies_are_accepted():
    assert loads(memoryview(b"[1, 2]"), "application/json") == [1, 2]
    assert loads("[1, 2]", "application/json") == [1, 2]


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=20,
    )
)
def test_json_round_trip_matches_kombu_for_any_plain_data(value):
    _, _, data = dumps(value)
    assert loads(data, "application/json") == value
    assert kombu_serialization.loads(data, "application/json", "utf-8", accept=JSON) == value


# -- other codecs ---------------------------------------------------------------------------


def test_msgpack_interoperates_with_kombu():
    value = {"args": [1, "two", b"\x00\x01", None, 2.5], "kw": {"a": [True]}}
    content_type, encoding, data = dumps(value, "msgpack")
    assert (content_type, encoding) == ("application/x-msgpack", "binary")
    accept = ["application/x-msgpack"]
    assert kombu_serialization.loads(data, content_type, encoding, accept=accept) == value
    theirs = kombu_serialization.dumps(value, "msgpack")
    assert loads(theirs[2], theirs[0], theirs[1], accept=["application/x-msgpack"]) == value


def test_msgpack_refuses_what_kombu_msgpack_cannot_carry():
    with pytest.raises(EncodeError, match="msgpack"):
        dumps([datetime.now()], "msgpack")


def test_codec_for_finds_by_name_or_content_type():
    assert serialization.codec_for("json") is serialization.codec_for("application/json")
    assert serialization.codec_for("application/x-msgpack").name == "msgpack"


def test_unknown_serializer_names_the_closest_one():
    with pytest.raises(ConfigurationError, match="did you mean 'json'") as info:
        dumps([], "jsn")
    assert info.value.suggestion == "json"


def test_yaml_without_pyyaml_says_what_to_install():
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match="PyYAML"):
            serialization.codec_for("yaml")
    else:  # pragma: no cover - PyYAML present
        assert serialization.codec_for("yaml").content_type == "application/x-yaml"


def test_registered_codec_is_usable_by_name_and_type():
    codec = serialization.Codec(
        "upper", "application/x-upper", "utf-8",
        lambda obj: str(obj).upper().encode(), lambda data: bytes(data).decode().lower(),
    )
    serialization.register_codec(codec)
    assert dumps("abc", "upper") == ("application/x-upper", "utf-8", b"ABC")
    assert loads(b"ABC", "application/x-upper", accept=["upper"]) == "abc"


# -- the allowlist --------------------------------------------------------------------------


def test_pickle_is_refused_by_default_without_being_decoded():
    # Given a pickle body whose decoding would run code
    Trap.fired = False
    content_type, encoding, data = dumps(Trap(), "pickle")
    Trap.fired = False
    # When decoded with the default allowlist
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize") as info:
        loads(data, content_type, encoding)
    # Then nothing ran, and the error keeps the raw bytes and content type for quarantine
    assert Trap.fired is False
    assert info.value.body == data
    assert info.value.content_type == content_type


def test_pickle_is_refused_even_by_the_trusted_any_codec_path():
    _, _, data = dumps(Trap(), "pickle")
    Trap.fired = False
    with pytest.raises(ContentDisallowed):
        loads(data, "application/x-python-serialize", "binary", accept=None)
    assert Trap.fired is False


@pytest.mark.parametrize("accept", [["pickle"], ["application/x-python-serialize"]])
def test_pickle_decodes_when_the_allowlist_names_it(accept):
    _, _, data = dumps({"when": date(2020, 1, 1)}, "pickle")
    assert loads(data, "application/x-python-serialize", "binary", accept) == {
        "when": date(2020, 1, 1)
    }


def test_accept_none_allows_every_safe_codec():
    assert loads(dumps([1], "msgpack")[2], "application/x-msgpack", "binary", None) == [1]


def test_json_refused_when_only_msgpack_is_accepted():
    with pytest.raises(ContentDisallowed, match="application/x-msgpack"):
        loads(b"[1]", "application/json", accept=("msgpack",))


def test_a_misspelled_allowlist_entry_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="msgpack"):
        loads(b"[1]", "application/json", accept=["msgpak"])


def test_undecodable_json_is_a_decode_error_carrying_the_bytes():
    with pytest.raises(DecodeError) as info:
        loads(b'{"unterminated": ', "application/json")
    assert not isinstance(info.value, ContentDisallowed)
    assert info.value.body == b'{"unterminated": '
    assert info.value.content_type == "application/json"


def test_accepted_type_with_no_codec_is_a_decode_error():
    with pytest.raises(DecodeError, match="no decoder"):
        loads(b"x", "application/x-made-up", accept=["application/x-made-up"])


# -- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "mime"),
    [
        ("zlib", "application/x-gzip"),
        ("gzip", "application/x-gzip"),
        ("bzip2", "application/x-bz2"),
        ("lzma", "application/x-lzma"),
        ("application/x-bz2", "application/x-bz2"),
    ],
)
def test_compression_interoperates_with_kombu(method, mime):
    body = b"task body " * 200
    used, packed = compress(body, method)
    assert used == mime
    assert kombu_compression.decompress(packed, used) == body
    theirs, their_mime = kombu_compression.compress(body, method)
    assert their_mime == mime
    assert decompress(theirs, their_mime) == body
    assert decompress(theirs, method) == body


def test_real_gzip_files_also_decompress():
    import gzip

    assert decompress(gzip.compress(b"hello"), "application/x-gzip") == b"hello"


@pytest.mark.parametrize("method", ["zlib", "bzip2", "lzma"])
def test_decompression_is_bounded(method):
    # Given a small body that expands to 4 MiB (a compression bomb in miniature)
    mime, packed = compress(b"\0" * (4 * 1024 * 1024), method)
    assert len(packed) < 64 * 1024
    # When decompressed with a 1 MiB limit, Then it is refused, not expanded
    with pytest.raises(DecodeError, match="exceeds the limit") as info:
        decompress(packed, mime, max_size=1024 * 1024)
    assert info.value.body == packed
    # And the same body within the limit works
    assert len(decompress(packed, mime, max_size=4 * 1024 * 1024)) == 4 * 1024 * 1024


@pytest.mark.parametrize("method", ["zlib", "bzip2", "lzma"])
def test_truncated_compressed_data_is_a_decode_error(method):
    mime, packed = compress(b"abcdefgh" * 1000, method)
    with pytest.raises(DecodeError, match=r"truncated|cannot decompress"):
        decompress(packed[: len(packed) // 2], mime)


def test_corrupt_compressed_data_is_a_decode_error():
    with pytest.raises(DecodeError, match="cannot decompress"):
        decompress(b"definitely not zlib", "zlib")


def test_unknown_compression_is_a_configuration_error_on_the_way_out():
    with pytest.raises(ConfigurationError, match="did you mean 'lzma'"):
        compress(b"x", "lzmaa")


def test_unknown_compression_is_a_decode_error_on_the_way_in():
    with pytest.raises(DecodeError, match="application/x-snappy"):
        decompress(zlib.compress(b"x"), "application/x-snappy")
