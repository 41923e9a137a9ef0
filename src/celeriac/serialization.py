"""Codecs for message bodies, the ``accept_content`` allowlist, and compression.

Every body on the wire is bytes plus a content type (``application/json``) and a content
encoding (``utf-8``/``binary``), exactly as kombu labels them, so Celery peers decode what we
send and we decode what they send.

Safety rules (``spec/reliability.md`` section 3):

* the content type is checked against the allowlist *before* any decoding is attempted;
* pickle is registered (Celery peers may send it) but decodes only when the allowlist names
  it, even for the trusted ``accept=None`` path;
* decompression is bounded, so a small compressed body cannot expand without limit.

JSON goes through orjson. Values JSON cannot hold travel as kombu's type tags
(``{"__type__": "datetime", "__value__": "..."}`` for datetime, date, time, decimal, uuid,
bytes). Plain data costs one orjson call each way; the slower, exact paths run only when the
payload needs them. Known differences from kombu: float NaN and infinities encode as ``null``
(orjson) where kombu writes the non-standard ``NaN`` (we still decode Celery's ``NaN``), and
enums and dataclasses encode as their value / a dict where kombu refuses them.
"""

from __future__ import annotations

import base64
import bz2
import json
import lzma
import pickle
import re
import uuid
import zlib
from collections.abc import Callable, Collection
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import msgpack  # type: ignore[import-untyped]
import orjson

from .exceptions import ConfigurationError, ContentDisallowed, DecodeError, EncodeError

__all__ = [
    "Codec",
    "register_codec",
    "codec_for",
    "registered_codecs",
    "accepted_content_types",
    "checked_codec",
    "decode_with",
    "dumps",
    "loads",
    "compress",
    "decompress",
    "compression_methods",
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
]

#: Upper bound, in bytes, on what :func:`decompress` produces unless told otherwise.
DEFAULT_MAX_DECOMPRESSED_SIZE = 64 * 1024 * 1024


class Codec:
    """One serializer: a name, the content type and encoding it writes, and the two functions.

    Args:
        name: Short name used in settings (``"json"``).
        content_type: MIME type written on messages (``"application/json"``).
        content_encoding: ``"utf-8"`` for text formats, ``"binary"`` otherwise.
        dumps: Object to bytes. Raise anything on failure: :func:`dumps` wraps it.
        loads: Bytes to object. Raise anything on failure: :func:`loads` wraps it.
        unsafe: Decoding can run code (pickle). Such a codec decodes only when an
            allowlist names it explicitly.
    """

    __slots__ = ("content_encoding", "content_type", "dumps", "loads", "name", "unsafe")

    def __init__(
        self,
        name: str,
        content_type: str,
        content_encoding: str,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
        *,
        unsafe: bool = False,
    ) -> None:
        self.name = name
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.dumps = dumps
        self.loads = loads
        self.unsafe = unsafe

    def __repr__(self) -> str:
        return f"<Codec {self.name} {self.content_type}>"


_by_name: dict[str, Codec] = {}
_by_type: dict[str, Codec] = {}
#: Names whose codec is missing an optional library, so errors can say what to install.
_optional: dict[str, tuple[str, str]] = {"yaml": ("application/x-yaml", "PyYAML")}
_accept_cache: dict[Any, frozenset[str]] = {}


def register_codec(codec: Codec) -> None:
    """Add (or replace) a codec, found afterwards by its name and by its content type."""
    _by_name[codec.name] = codec
    _by_type[codec.content_type] = codec
    _accept_cache.clear()


def registered_codecs() -> dict[str, Codec]:
    """Name -> codec, for every codec this process can use."""
    return dict(_by_name)


def codec_for(name_or_content_type: str) -> Codec:
    """The codec for a name (``"json"``) or a content type (``"application/json"``).

    Raises:
        ConfigurationError: No such codec; the message names the closest one, or the
            library to install for a known optional codec.
    """
    codec = _by_name.get(name_or_content_type) or _by_type.get(name_or_content_type)
    if codec is not None:
        return codec
    for name, (ctype, lib) in _optional.items():
        if name_or_content_type in (name, ctype):
            raise ConfigurationError(
                f"serializer {name!r} needs the {lib} library, which is not installed",
                key=name_or_content_type,
            )
    raise ConfigurationError.unknown_key(name_or_content_type, [*_by_name, *_by_type], "serializer")


#: Allowlist types used as cache keys as they are (others are copied to a tuple).
_CACHE_KEY_TYPES = (tuple, frozenset)


def accepted_content_types(accept: Collection[str] | None) -> frozenset[str] | None:
    """Normalize an allowlist of names and/or content types to content types.

    ``None`` stays ``None`` (meaning: every registered codec that is not unsafe).

    Raises:
        ConfigurationError: An entry is neither a registered name nor a content type.
    """
    if accept is None:
        return None
    key = accept if isinstance(accept, _CACHE_KEY_TYPES) else tuple(accept)
    cached = _accept_cache.get(key)
    if cached is not None:
        return cached
    types: set[str] = set()
    for item in key:
        if not isinstance(item, str):
            raise ConfigurationError(f"accept_content entries must be strings, got {item!r}")
        codec = _by_name.get(item)
        if codec is not None:
            types.add(codec.content_type)
        elif "/" in item:
            types.add(item)
        elif item in _optional:
            types.add(_optional[item][0])
        else:
            raise ConfigurationError.unknown_key(
                item, list(_by_name), "serializer in accept_content"
            )
    result = frozenset(types)
    if len(_accept_cache) > 64:
        _accept_cache.clear()
    _accept_cache[key] = result
    return result


def dumps(obj: Any, serializer: str = "json") -> tuple[str, str, bytes]:
    """Serialize ``obj``; returns ``(content_type, content_encoding, body)``.

    Raises:
        ConfigurationError: Unknown serializer name.
        EncodeError: The value cannot be represented by this serializer.
    """
    codec = _by_name.get(serializer) or codec_for(serializer)
    try:
        body = codec.dumps(obj)
    except EncodeError:
        raise
    except Exception as exc:
        raise EncodeError(f"cannot serialize with {codec.name}: {exc}") from exc
    return codec.content_type, codec.content_encoding, body


def loads(
    data: bytes,
    content_type: str,
    content_encoding: str = "utf-8",
    accept: Collection[str] | None = ("json",),
) -> Any:
    """Decode ``data`` after checking its content type against ``accept``.

    Args:
        data: The body bytes (``bytearray``/``memoryview``/``str`` also work).
        content_type: As labelled on the message.
        content_encoding: Character set of text formats; ``binary`` for the others.
        accept: Allowed names or content types. ``None`` allows every registered codec
            except unsafe ones (pickle); use it only for data this process wrote itself.

    Raises:
        ContentDisallowed: The content type is not allowed; nothing was decoded.
        DecodeError: The bytes are not valid for the codec, or no codec is installed.
    """
    codec = checked_codec(content_type, accept, data)
    return decode_with(codec, data, content_encoding)


def checked_codec(content_type: str, accept: Collection[str] | None, data: Any = None) -> Codec:
    """The codec to decode ``content_type`` with, after the allowlist check.

    Split out of :func:`loads` so callers can refuse disallowed content before doing any
    other work on the body (for example decompressing it).

    Raises:
        ContentDisallowed: Not allowed by ``accept``.
        DecodeError: Allowed, but no codec for it is installed.
    """
    content_type = content_type or "application/data"
    allowed = accepted_content_types(accept)
    codec = _by_type.get(content_type)
    if allowed is None:
        if codec is not None and codec.unsafe:
            raise ContentDisallowed(
                f"refusing to decode {codec.name} ({content_type}) content without an "
                "allowlist naming it",
                body=_as_bytes(data),
                content_type=content_type,
            )
    elif content_type not in allowed:
        raise ContentDisallowed(
            f"refusing to decode content of type {content_type!r}: not in accept_content "
            f"({', '.join(sorted(allowed))})",
            body=_as_bytes(data),
            content_type=content_type,
        )
    if codec is None:
        raise DecodeError(
            f"no decoder installed for content type {content_type!r}",
            body=_as_bytes(data),
            content_type=content_type,
        )
    return codec


def decode_with(codec: Codec, data: Any, content_encoding: str = "utf-8") -> Any:
    """Decode with an already checked codec, wrapping any failure in :class:`DecodeError`."""
    try:
        if (
            content_encoding
            and content_encoding not in _PASSTHROUGH_ENCODINGS
            and codec.content_encoding != "binary"
            and not isinstance(data, str)
        ):
            data = bytes(data).decode(content_encoding)
        return codec.loads(data)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(
            f"cannot decode {codec.content_type} body: {exc}",
            body=_as_bytes(data),
            content_type=codec.content_type,
        ) from exc


_PASSTHROUGH_ENCODINGS = frozenset({"utf-8", "utf8", "UTF-8", "binary", "8bit"})


def _as_bytes(data: Any) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    return bytes(data)


# -- JSON ---------------------------------------------------------------------------------


def _tag(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def _json_default(obj: Any) -> Any:
    """Values orjson (or the stdlib fallback) cannot write, as kombu's type tags."""
    if isinstance(obj, datetime):
        return _tag("datetime", obj.isoformat())
    if isinstance(obj, date):
        return _tag("date", obj.isoformat())
    if isinstance(obj, time):
        return _tag("time", obj.isoformat())
    if isinstance(obj, Decimal):
        return _tag("decimal", str(obj))
    if isinstance(obj, uuid.UUID):
        return _tag("uuid", {"hex": obj.hex})
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return _tag("bytes", raw.decode("utf-8"))
        except UnicodeDecodeError:
            return _tag("base64", base64.b64encode(raw).decode("ascii"))
    reducer = getattr(obj, "__json__", None)
    if reducer is not None:
        return reducer()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_JSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME
#: orjson writes a ``uuid.UUID`` natively as a plain string; this finds strings that may be one.
_UUID_TEXT = re.compile(rb'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"')
#: Integers past 64 bits: orjson would read them as floats, the stdlib reads them exactly.
_BIG_INT = re.compile(rb"[0-9]{20}")
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def _json_dumps(obj: Any) -> bytes:
    try:
        out = orjson.dumps(obj, default=_json_default, option=_JSON_OPTIONS)
    except TypeError:
        # Integers past 64 bits, non-string keys (int, float, bool, None, as kombu writes them),
        # or a genuinely unsupported type (the stdlib raises it again, with its message).
        return _stdlib_dumps(obj)
    # Task ids look like UUIDs in the output, so the search finds one in nearly every
    # message and result: look for UUID objects without copying anything first.
    if _UUID_TEXT.search(out) is not None and _holds_uuid(obj):
        try:
            out = orjson.dumps(_tag_uuids(obj), default=_json_default, option=_JSON_OPTIONS)
        except TypeError:  # the tags nest two levels deeper, past orjson's limit
            return _stdlib_dumps(obj)
    return out


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(
        obj, default=_json_default, ensure_ascii=False, separators=(",", ":"), allow_nan=True
    ).encode("utf-8")


def _holds_uuid(obj: Any) -> bool:
    """Whether ``obj`` holds a ``uuid.UUID`` anywhere: as :func:`_tag_uuids` walks, but
    copying nothing (a result meta: about 0.6 us against 2.6)."""
    if type(obj) in _PLAIN_SCALARS:
        return False
    if isinstance(obj, uuid.UUID):
        return True
    if isinstance(obj, dict):
        obj = obj.values()
    elif not isinstance(obj, list | tuple):
        return False
    # a loop, not any() over a generator: two more frames per level would halve the
    # nesting a result can have before the walk runs out of stack
    for item in obj:  # noqa: SIM110
        if type(item) not in _PLAIN_SCALARS and _holds_uuid(item):
            return True
    return False


def _tag_uuids(obj: Any) -> Any:
    """``obj`` with every ``uuid.UUID`` replaced by its type tag; ``obj`` itself if none."""
    kind = type(obj)
    if kind in _PLAIN_SCALARS:
        return obj
    if isinstance(obj, uuid.UUID):
        return _tag("uuid", {"hex": obj.hex})
    if isinstance(obj, list | tuple):
        items = [_tag_uuids(item) for item in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return items
    if isinstance(obj, dict):
        values = {k: _tag_uuids(v) for k, v in obj.items()}
        if all(values[k] is v for k, v in obj.items()):
            return obj
        return values
    return obj


_TAG_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": lambda v: datetime.fromisoformat(v).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda v: uuid.UUID(**v) if isinstance(v, dict) else uuid.UUID(v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("ascii")),
}


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        kind = obj["__type__"]
        decoder = _TAG_DECODERS.get(kind)
        if decoder is None:
            raise ValueError(f"unsupported JSON type tag {kind!r}")
        return decoder(obj["__value__"])
    return obj


def _json_loads(data: bytes | str) -> Any:
    if isinstance(data, str):
        raw = data.encode("utf-8")
    elif isinstance(data, bytes):
        raw = data
    else:
        raw = bytes(data)
    if b'"__type__"' in raw or _BIG_INT.search(raw) is not None:
        return _stdlib_loads(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # NaN / Infinity written by Python's json module, or nesting orjson refuses.
        return _stdlib_loads(raw)


def _stdlib_loads(raw: bytes | bytearray | memoryview) -> Any:
    text = bytes(raw).decode("utf-8")
    try:
        return json.loads(text, object_hook=_object_hook)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


# -- other codecs -------------------------------------------------------------------------


def _msgpack_dumps(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _msgpack_loads(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=4)


def _pickle_loads(data: bytes) -> Any:
    return pickle.loads(data)


def _raw_dumps(obj: Any) -> bytes:
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj)
    raise TypeError(f"the raw serializer takes bytes or str, not {type(obj).__name__}")


def _raw_loads(data: bytes) -> bytes:
    return data if isinstance(data, bytes) else _as_bytes(data) or b""


def _text_loads(data: bytes | str) -> str:
    return data if isinstance(data, str) else bytes(data).decode("utf-8")


register_codec(Codec("json", "application/json", "utf-8", _json_dumps, _json_loads))
register_codec(Codec("msgpack", "application/x-msgpack", "binary", _msgpack_dumps, _msgpack_loads))
register_codec(
    Codec(
        "pickle", "application/x-python-serialize", "binary", _pickle_dumps, _pickle_loads,
        unsafe=True,
    )
)
# kombu's "trusted" passthrough types: bytes stay bytes.
register_codec(Codec("raw", "application/data", "binary", _raw_dumps, _raw_loads))
register_codec(Codec("text", "text/plain", "utf-8", _raw_dumps, _text_loads))

try:
    import yaml as _yaml  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:  # pragma: no cover - depends on the environment
    del _optional["yaml"]
    register_codec(
        Codec(
            "yaml", "application/x-yaml", "utf-8",
            lambda obj: _yaml.safe_dump(obj).encode("utf-8"),
            lambda data: _yaml.safe_load(bytes(data) if not isinstance(data, str) else data),
        )
    )


# -- compression --------------------------------------------------------------------------

_Decompressor = Callable[[], Any]
_compressors: dict[str, Callable[[bytes], bytes]] = {}
_decompressors: dict[str, _Decompressor] = {}
_compression_aliases: dict[str, str] = {}


def _register_compression(
    mime: str, compress_fn: Callable[[bytes], bytes], decompressor: _Decompressor, *aliases: str
) -> None:
    _compressors[mime] = compress_fn
    _decompressors[mime] = decompressor
    for alias in aliases:
        _compression_aliases[alias] = mime


# wbits=47 reads both zlib streams (what kombu writes for "gzip") and real gzip files.
_register_compression(
    "application/x-gzip", zlib.compress, lambda: zlib.decompressobj(47), "zlib", "gzip"
)
_register_compression("application/x-bz2", bz2.compress, bz2.BZ2Decompressor, "bzip2", "bzip")
_register_compression("application/x-lzma", lzma.compress, lzma.LZMADecompressor, "lzma", "xz")

try:  # Python 3.14 ships zstd; older versions use the backport kombu also uses.
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:
    try:
        from backports import zstd as _zstd  # type: ignore[import-not-found]
    except ImportError:
        _zstd = None
if _zstd is not None:  # pragma: no cover - depends on the environment
    _register_compression(
        "application/zstd", _zstd.compress, _zstd.ZstdDecompressor, "zstd", "zstandard"
    )


def compression_methods() -> list[str]:
    """Every accepted compression name and MIME type."""
    return [*_compression_aliases, *_compressors]


def compress(body: bytes, method: str) -> tuple[str, bytes]:
    """Compress ``body`` with ``method`` (``"zlib"``, ``"gzip"``, ``"bzip2"``, ``"lzma"``,
    ``"zstd"`` when installed, or a MIME type).

    Returns ``(mime_type, compressed)``; the MIME type is what goes in the ``compression``
    header, as kombu writes it.

    Raises:
        ConfigurationError: Unknown or unavailable method.
    """
    mime = _compression_aliases.get(method, method)
    fn = _compressors.get(mime)
    if fn is None:
        raise ConfigurationError.unknown_key(method, compression_methods(), "compression method")
    return mime, fn(body)


def decompress(
    body: bytes, mime_or_name: str, max_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE
) -> bytes:
    """Decompress ``body``, refusing to produce more than ``max_size`` bytes.

    Raises:
        DecodeError: Unknown method, corrupt or truncated data, or output past ``max_size``
            (a compression bomb). The error carries the compressed bytes.
    """
    mime = _compression_aliases.get(mime_or_name, mime_or_name)
    factory = _decompressors.get(mime)
    if factory is None:
        raise DecodeError(
            f"unknown or unavailable compression {mime_or_name!r} "
            f"(known: {', '.join(sorted(_compressors))})",
            body=body,
        )
    try:
        return _bounded_decompress(factory, bytes(body), max_size)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"cannot decompress {mime} body: {exc}", body=bytes(body)) from exc


def _bounded_decompress(factory: _Decompressor, data: bytes, max_size: int) -> bytes:
    chunks: list[bytes] = []
    produced = 0
    while True:
        decomp = factory()
        chunk = decomp.decompress(data, max_size - produced + 1)
        produced += len(chunk)
        chunks.append(chunk)
        if produced > max_size:
            raise DecodeError(
                f"decompressed body exceeds the limit of {max_size} bytes", body=data
            )
        if not decomp.eof:
            if getattr(decomp, "unconsumed_tail", b"") or not getattr(decomp, "needs_input", True):
                raise DecodeError(
                    f"decompressed body exceeds the limit of {max_size} bytes", body=data
                )
            raise DecodeError("compressed body is truncated", body=data)
        data = decomp.unused_data
        if not data:
            return b"".join(chunks)
