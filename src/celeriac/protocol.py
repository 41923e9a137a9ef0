"""The task message: Celery protocol v2 on the way out, v2/v1/hybrid on the way in.

Protocol v2 keeps every piece of metadata in the message *headers* so brokers, monitors and
the worker's dispatcher never decode the body; the body is only ``[args, kwargs, embed]``.
``spec/celery-wire.md`` section 1 is the reference this module follows field by field, so a
Celery 5 worker runs what we send and we run what a Celery 5 client sends.

:func:`decode_task_message` runs once per message in the worker's main loop, so its common
case (v2, JSON, no ETA) does one allowlist check, one orjson call, a few type checks and no
date parsing or copying.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .exceptions import DecodeError, InvalidTaskMessage
from .messaging.message import Message
from .serialization import (
    DEFAULT_MAX_DECOMPRESSED_SIZE,
    checked_codec,
    codec_for,
    compress,
    decode_with,
    decompress,
    dumps,
    loads,
)
from .utils.saferepr import saferepr

__all__ = [
    "ARGSREPR_MAXSIZE",
    "TaskMessage",
    "build_task_message",
    "decode_task_message",
    "origin_nodename",
    "parse_iso8601",
]

#: Longest ``argsrepr``/``kwargsrepr`` header, in characters (Celery's limit).
ARGSREPR_MAXSIZE = 1024

#: Headers a caller's extra ``headers=`` may not change: they say which task this is.
_IDENTITY_HEADERS = ("task", "id")

_origin: str | None = None


def _forget_origin() -> None:
    global _origin
    _origin = None


os.register_at_fork(after_in_child=_forget_origin)


def origin_nodename() -> str:
    """``gen<pid>@<hostname>``: the ``origin`` of messages sent by a non-worker process.

    Cached, and recomputed in a forked child, whose pid differs.
    """
    global _origin
    if _origin is None:
        _origin = f"gen{os.getpid()}@{socket.gethostname()}"
    return _origin


def parse_iso8601(s: str) -> datetime:
    """Parse an ISO-8601 date/time; a value without an offset is taken as UTC.

    Raises:
        ValueError: Not a string in ISO-8601 form; the message quotes the value.
    """
    if not isinstance(s, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(s).__name__}: {s!r}")
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO-8601 date/time: {s!r}") from None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


#: Types whose ``repr`` is short and cannot fail (ints are also checked for size).
_SMALL_REPR = frozenset({int, float, bool, type(None)})
#: Up to this many arguments of at most this length, a plain ``repr`` equals ``saferepr``.
_FAST_REPR_ITEMS = 16
_FAST_REPR_STR = 48


def _is_small(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= _FAST_REPR_STR
    if kind is int:
        return bool(-(2**63) <= value < 2**63)
    return kind in _SMALL_REPR


def _argsrepr(args: Sequence[Any]) -> str:
    """``saferepr`` of the arguments as a tuple (as Celery shows them), fast for plain ones."""
    if not args:
        return "()"
    if len(args) <= _FAST_REPR_ITEMS and all(_is_small(a) for a in args):
        text = repr(tuple(args))
        if len(text) <= ARGSREPR_MAXSIZE:
            return text
    return saferepr(tuple(args), ARGSREPR_MAXSIZE)


def _kwargsrepr(kwargs: Mapping[str, Any]) -> str:
    if not kwargs:
        return "{}"
    if (
        type(kwargs) is dict
        and len(kwargs) <= _FAST_REPR_ITEMS
        and all(len(k) <= _FAST_REPR_STR and _is_small(v) for k, v in kwargs.items())
    ):
        text = repr(kwargs)
        if len(text) <= ARGSREPR_MAXSIZE:
            return text
    return saferepr(kwargs, ARGSREPR_MAXSIZE)


def _iso(value: datetime | str | None, what: str) -> str | None:
    """``value`` as the wire's ISO-8601 text with an offset (naive means UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat()
    if isinstance(value, str):
        parse_iso8601(value)  # refuse garbage here, not on the worker
        return value
    raise TypeError(f"{what} must be a datetime or an ISO-8601 string, not {type(value).__name__}")


def build_task_message(
    name: str,
    task_id: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    eta: datetime | str | None = None,
    expires: datetime | str | None = None,
    retries: int = 0,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    shadow: str | None = None,
    origin: str | None = None,
    ignore_result: bool = False,
    callbacks: list[Any] | None = None,
    errbacks: list[Any] | None = None,
    chain: list[Any] | None = None,
    chord: dict[str, Any] | None = None,
    argsrepr: str | None = None,
    kwargsrepr: str | None = None,
    reply_to: str | None = None,
    priority: int | None = None,
    serializer: str = "json",
    compression: str | None = None,
    headers: Mapping[str, Any] | None = None,
    replaced_task_nesting: int = 0,
    stamped_headers: list[str] | None = None,
    stamps: Mapping[str, Any] | None = None,
) -> Message:
    """Build a protocol v2 task message, ready to publish.

    Every header of ``spec/celery-wire.md`` 1.3 is present (``None`` where unset), the
    properties are those Celery sets (``correlation_id``, ``reply_to``, ``delivery_mode=2``,
    ``priority`` when given, ``expiration`` in milliseconds when ``expires`` is set) and the
    body is ``[args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]``.

    Args:
        eta, expires: Absolute times; naive datetimes are taken as UTC. An ISO-8601
            string (a retry re-sending the original header) is kept as it is.
        argsrepr, kwargsrepr: What logs and monitors show instead of the arguments (use
            them to hide secrets); by default a repr cut to 1024 characters.
        headers: Extra headers, merged over the standard ones (they reach the task as
            ``request.headers``); they may not change ``task`` or ``id``.

    Raises:
        TypeError: ``args``/``kwargs``/a time value has the wrong type.
        ValueError: Empty name or id, negative retries, priority outside 0-255, or extra
            headers that would change the task's name or id.
        EncodeError: The arguments cannot be serialized with ``serializer``.
        ConfigurationError: Unknown serializer or compression method.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"task name must be a non-empty string, got {name!r}")
    if not task_id or not isinstance(task_id, str):
        raise ValueError(f"task id must be a non-empty string, got {task_id!r}")
    kwargs = _check_call(args, kwargs)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
    ):
        raise ValueError(f"priority must be an integer from 0 to 255, got {priority!r}")

    eta_text = _iso(eta, "eta")
    expires_text = _iso(expires, "expires")
    if argsrepr is None:
        argsrepr = _argsrepr(args)
    if kwargsrepr is None:
        kwargsrepr = _kwargsrepr(kwargs)

    message_headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": shadow,
        "eta": eta_text,
        "expires": expires_text,
        "group": group_id,
        "group_index": group_index,
        "retries": retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": argsrepr,
        "kwargsrepr": kwargsrepr,
        "origin": origin or origin_nodename(),
        "ignore_result": bool(ignore_result),
        "replaced_task_nesting": replaced_task_nesting,
        "stamped_headers": stamped_headers,
        "stamps": dict(stamps) if stamps else {},
    }
    if headers:
        for key in _IDENTITY_HEADERS:
            if key in headers and headers[key] != message_headers[key]:
                raise ValueError(
                    f"extra header {key!r}={headers[key]!r} would change the task's "
                    f"{key} ({message_headers[key]!r})"
                )
        message_headers.update(headers)

    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": reply_to or "",
        "delivery_mode": 2,
    }
    if priority is not None:
        properties["priority"] = priority
    if expires_text is not None:
        remaining = (parse_iso8601(expires_text) - datetime.now(UTC)).total_seconds()
        properties["expiration"] = str(int(max(remaining, 0.0) * 1000))

    body = (
        args,
        kwargs,
        {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord},
    )
    content_type, content_encoding, payload = dumps(body, serializer)
    if compression:
        mime, payload = compress(payload, compression)
        message_headers["compression"] = mime
    return Message(payload, message_headers, properties, content_type, content_encoding)


def _check_call(args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> Mapping[str, Any]:
    kind = type(args)  # tuple and list first: the ABC checks cost more than the rest
    if kind is not tuple and kind is not list and (
        isinstance(args, str | bytes) or not isinstance(args, Sequence)
    ):
        raise TypeError(f"task args must be a list or tuple, not {type(args).__name__}")
    if kwargs is None:
        return {}
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
        raise TypeError(f"task kwargs must be a mapping, not {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"task kwargs keys must be strings, got {key!r}")
    return kwargs


class MessageTemplate:
    """Many calls of one task with the same options, built from one full build.

    :func:`build_task_message` resolves every option, header and property; a bulk send
    repeats that for each call although only the id, the arguments and their reprs
    differ. A template keeps the first message and makes the others from it: a copy of
    its headers and properties with the new id, and the new arguments serialized with
    the first message's embed. The messages are exactly what ``build_task_message``
    would have built for the same call at the same moment.
    """

    __slots__ = ("_embed", "_headers", "_own_root", "_properties", "_reprs", "_serializer")

    def __init__(self, first: Message, own_reprs: bool) -> None:
        headers = first.headers
        if "compression" in headers:
            raise ValueError("a compressed message cannot serve as a template")
        self._headers = headers
        self._properties = first.properties
        serializer = self._serializer = codec_for(first.content_type).name
        #: The root is the message itself unless it was sent from inside a task.
        self._own_root = headers.get("root_id") == headers.get("id")
        self._reprs = own_reprs
        body = loads(first.body, first.content_type, first.content_encoding, (serializer,))
        self._embed = body[2]

    def build(self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> Message:
        """The message of one more call (same checks and errors as build_task_message)."""
        kwargs = _check_call(args, kwargs)
        headers = dict(self._headers)
        headers["id"] = task_id
        if self._own_root:
            headers["root_id"] = task_id
        if self._reprs:
            headers["argsrepr"] = _argsrepr(args)
            headers["kwargsrepr"] = _kwargsrepr(kwargs)
        properties = dict(self._properties)
        properties["correlation_id"] = task_id
        content_type, content_encoding, payload = dumps(
            (list(args), kwargs, self._embed), self._serializer  # a list, as send_task's
        )
        # A new message with a new random id: the id serves as its delivery tag too,
        # which saves the transport drawing a second one.
        return Message(
            payload, headers, properties, content_type, content_encoding, delivery_tag=task_id
        )


@dataclass(slots=True)
class TaskMessage:
    """A task message decoded for the worker, whatever protocol version it came in.

    ``headers`` holds the v2 headers as they travel (``eta``/``expires`` still ISO text,
    custom headers included); for a v1 message they are rebuilt from the body in v2 form.
    ``eta`` and ``expires`` are aware datetimes.
    """

    name: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]
    headers: dict[str, Any]
    eta: datetime | None
    expires: datetime | None
    retries: int
    time_limit: float | None
    soft_time_limit: float | None
    root_id: str | None
    parent_id: str | None
    group_id: str | None
    group_index: int | None
    origin: str | None
    shadow: str | None
    ignore_result: bool
    callbacks: list[Any] | None
    errbacks: list[Any] | None
    chain: list[Any] | None
    chord: dict[str, Any] | None
    argsrepr: str | None
    kwargsrepr: str | None


def decode_task_message(
    message: Message,
    accept: Collection[str],
    *,
    max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE,
) -> TaskMessage:
    """Decode a delivered task message (protocol v2, v1, or hybrid).

    v2: the ``task`` header is present and the body is ``[args, kwargs, embed]``.
    Hybrid: v2 headers with a v1-style dict body holding ``args``. v1: no ``task`` header;
    everything, including ``task`` and ``id``, is in a dict body.

    Args:
        accept: Allowed serializer names or content types (``accept_content``). Checked
            before the body is decompressed or decoded.
        max_decompressed_size: Refuse compressed bodies that expand past this many bytes.

    Raises:
        ContentDisallowed: The content type is not in ``accept``.
        DecodeError: The body cannot be decompressed or decoded.
        InvalidTaskMessage: It decoded but is not a task message.
        Each carries the message's raw body and content type, for quarantine.
    """
    headers = message.headers
    try:
        codec = checked_codec(message.content_type, accept, message.body)
        body = message.body
        compression = headers.get("compression")
        if compression:
            body = decompress(body, compression, max_decompressed_size)
        payload = decode_with(codec, body, message.content_encoding)
        if "task" in headers:
            if type(payload) is list and len(payload) == 3:
                return _from_v2(headers, payload)
            if isinstance(payload, tuple | list) and len(payload) == 3:
                return _from_v2(headers, list(payload))
            if isinstance(payload, dict) and "args" in payload:
                return _from_v1(payload, headers)
            raise _invalid(
                "body must be a list [args, kwargs, embed], "
                f"got {_describe(payload)}",
                headers,
            )
        if isinstance(payload, dict) and "task" in payload:
            return _from_v1(payload, None)
        raise _invalid(
            f"no 'task' header and the body is not a protocol v1 task ({_describe(payload)})",
            headers,
        )
    except DecodeError as exc:
        exc.body = message.body
        exc.content_type = message.content_type
        raise


def _describe(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _invalid(reason: str, headers: Mapping[str, Any]) -> InvalidTaskMessage:
    ident = headers.get("id")
    name = headers.get("task")
    where = f" {name}[{ident}]" if name or ident else ""
    return InvalidTaskMessage(f"invalid task message{where}: {reason}")


def _when(value: Any, field: str, headers: Mapping[str, Any], utc: bool = True) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _invalid(f"{field} is not an ISO-8601 date/time: {value!r}", headers) from None
    else:
        raise _invalid(f"{field} must be an ISO-8601 string, got {value!r}", headers)
    if dt.tzinfo is None:
        # Protocol v1 with utc=False carried local wall time.
        dt = dt.replace(tzinfo=UTC) if utc else dt.astimezone(UTC)
    return dt


def _from_v2(headers: dict[str, Any], payload: list[Any]) -> TaskMessage:
    args, kwargs, embed = payload
    name = headers.get("task")
    task_id = headers.get("id")
    if not isinstance(name, str) or not name:
        raise _invalid(f"'task' header must be a non-empty string, got {name!r}", headers)
    if not isinstance(task_id, str) or not task_id:
        raise _invalid(f"'id' header must be a non-empty string, got {task_id!r}", headers)
    if type(args) is not list:
        if not isinstance(args, tuple | list):
            raise _invalid(f"args must be a list, got {_describe(args)}", headers)
        args = list(args)
    if type(kwargs) is not dict:
        if not isinstance(kwargs, Mapping):
            raise _invalid(f"kwargs must be a mapping, got {_describe(kwargs)}", headers)
        kwargs = dict(kwargs)
    if embed is None:
        embed = {}
    elif not isinstance(embed, dict):
        raise _invalid(f"embed must be a mapping or null, got {_describe(embed)}", headers)
    eta = headers.get("eta")
    expires = headers.get("expires")
    return _make(
        name, task_id, args, kwargs, embed, headers,
        None if eta is None else _when(eta, "eta", headers),
        None if expires is None else _when(expires, "expires", headers),
    )


def _make(
    name: str,
    task_id: str,
    args: list[Any],
    kwargs: dict[str, Any],
    embed: dict[str, Any],
    headers: dict[str, Any],
    eta: datetime | None,
    expires: datetime | None,
) -> TaskMessage:
    """Validate the remaining headers and embed fields and build the view."""
    retries = headers.get("retries") or 0
    if type(retries) is not int and not _is_int(retries):
        raise _invalid(f"retries must be an integer, got {retries!r}", headers)
    timelimit = headers.get("timelimit")
    hard = soft = None
    if timelimit is not None:
        if not isinstance(timelimit, list | tuple) or len(timelimit) != 2:
            raise _invalid(f"timelimit must be [hard, soft] seconds, got {timelimit!r}", headers)
        hard, soft = timelimit
        if (hard is not None and not _is_number(hard)) or (
            soft is not None and not _is_number(soft)
        ):
            raise _invalid(f"timelimit must be [hard, soft] seconds, got {timelimit!r}", headers)
    group_index = headers.get("group_index")
    if group_index is not None and not _is_int(group_index):
        raise _invalid(f"group_index must be an integer, got {group_index!r}", headers)
    callbacks = embed.get("callbacks")
    errbacks = embed.get("errbacks")
    chain = embed.get("chain")
    chord = embed.get("chord")
    if callbacks is not None:
        callbacks = _signature_list(callbacks, "callbacks", headers)
    if errbacks is not None:
        errbacks = _signature_list(errbacks, "errbacks", headers)
    if chain is not None:
        chain = _signature_list(chain, "chain", headers)
    if chord is not None and not isinstance(chord, dict):
        raise _invalid(f"chord must be a signature mapping, got {_describe(chord)}", headers)
    return TaskMessage(
        name,
        task_id,
        args,
        kwargs,
        embed,
        headers,
        eta,
        expires,
        retries,
        hard,
        soft,
        headers.get("root_id"),
        headers.get("parent_id"),
        headers.get("group"),
        group_index,
        headers.get("origin"),
        headers.get("shadow"),
        bool(headers.get("ignore_result")),
        callbacks,
        errbacks,
        chain,
        chord,
        headers.get("argsrepr"),
        headers.get("kwargsrepr"),
    )


def _signature_list(value: Any, field: str, headers: Mapping[str, Any]) -> list[Any]:
    if type(value) is list:
        return value
    if isinstance(value, tuple):
        return list(value)
    raise _invalid(f"{field} must be a list of signatures, got {_describe(value)}", headers)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: v1 body fields copied into v2-form headers (everything but the arguments and callbacks).
_V1_HEADER_FIELDS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "meth",
)


def _from_v1(body: dict[str, Any], message_headers: Mapping[str, Any] | None) -> TaskMessage:
    """Protocol v1 (``message_headers`` None) or hybrid (v2 headers override the body)."""
    headers: dict[str, Any] = {k: body.get(k) for k in _V1_HEADER_FIELDS}
    if headers["group"] is None and body.get("taskset") is not None:
        headers["group"] = body["taskset"]
    if headers["retries"] is None:
        headers["retries"] = 0
    if message_headers:
        headers.update(message_headers)
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if args is None:
        args = []
    if not isinstance(args, list | tuple):
        raise _invalid(f"args must be a list, got {_describe(args)}", headers)
    if not isinstance(kwargs, Mapping):
        raise _invalid(f"kwargs must be a mapping, got {_describe(kwargs)}", headers)
    args = list(args)
    kwargs = dict(kwargs)
    name = headers.get("task")
    task_id = headers.get("id")
    if not isinstance(name, str) or not name:
        raise _invalid(f"'task' must be a non-empty string, got {name!r}", headers)
    if not isinstance(task_id, str) or not task_id:
        raise _invalid(f"'id' must be a non-empty string, got {task_id!r}", headers)
    if headers.get("root_id") is None:
        headers["root_id"] = task_id
    if headers.get("argsrepr") is None:
        headers["argsrepr"] = saferepr(tuple(args), ARGSREPR_MAXSIZE)
    if headers.get("kwargsrepr") is None:
        headers["kwargsrepr"] = saferepr(kwargs, ARGSREPR_MAXSIZE)
    utc = body.get("utc", True) is not False
    eta = _when(headers.get("eta"), "eta", headers, utc)
    expires = _when(headers.get("expires"), "expires", headers, utc)
    # Keep the wire form of the times in the rebuilt headers, with an explicit offset.
    if eta is not None:
        headers["eta"] = eta.isoformat()
    if expires is not None:
        headers["expires"] = expires.isoformat()
    embed = {
        "callbacks": body.get("callbacks"),
        "errbacks": body.get("errbacks"),
        "chain": None,
        "chord": body.get("chord"),
    }
    return _make(name, task_id, args, kwargs, embed, headers, eta, expires)
