"""kombu's Redis layout: URLs, key and channel names, priority steps and the envelope.

Everything here is pure (no I/O), so the wire format can be checked without a server.
Names follow kombu's Redis transport (spec ``celery-wire.md`` section 2): a queue is the
list ``<queue>`` plus ``<queue><sep><step>`` per non-zero priority step, bindings are
``_kombu.binding.<exchange>`` sets of ``<routing key><sep><pattern><sep><queue>``, fanout
travels over PUB/SUB channels ``/<db>.<exchange>[/<routing key>]``, and every key and
channel starts with the ``global_keyprefix``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
from bisect import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from ...exceptions import ConfigurationError
from ..message import Message

__all__ = [
    "SEP",
    "PRIORITY_STEPS",
    "Endpoint",
    "Layout",
    "parse_url",
    "topic_pattern",
    "encode_envelope",
    "decode_envelope",
    "mark_redelivered",
]

#: kombu's separator in priority list names and binding members (ASCII ACK + SYN).
SEP = "\x06\x16"
#: kombu's default priority steps: priority ``p`` goes to the largest step <= ``p``.
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
#: Default Redis port.
DEFAULT_PORT = 6379

_SSL_REQS = {
    "cert_none": ssl.CERT_NONE,
    "none": ssl.CERT_NONE,
    "cert_optional": ssl.CERT_OPTIONAL,
    "optional": ssl.CERT_OPTIONAL,
    "cert_required": ssl.CERT_REQUIRED,
    "required": ssl.CERT_REQUIRED,
}
_SSL_QUERY = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect: keyword arguments for redis-py, the db number, sentinels."""

    kwargs: dict[str, Any]
    db: int
    #: ``(host, port)`` of every Sentinel, for ``sentinel://`` URLs (else empty).
    sentinels: tuple[tuple[str, int], ...] = field(default=())


def _db_of(text: str, url: str) -> int:
    text = text.strip("/")
    if not text:
        return 0
    try:
        db = int(text)
    except ValueError:
        raise ConfigurationError(
            f"Redis database in {_safe(url)!r} must be a number (e.g. redis://host:6379/0), "
            f"got {text!r}",
            key="broker_url",
        ) from None
    if db < 0:
        raise ConfigurationError(f"Redis database must be >= 0, got {db}", key="broker_url")
    return db


def _safe(url: str) -> str:
    """The URL with every password hidden, for error messages."""
    return re.sub(r"(://[^:/@;]*:)[^@/;]*@", r"\1**@", url)


def parse_url(url: str) -> Endpoint:
    """Parse ``redis://``, ``rediss://``, ``unix://``, ``redis+socket://``, ``sentinel://``.

    ``redis://[user:password@]host[:port][/db]``; ``rediss://`` adds TLS and accepts the
    query options ``ssl_cert_reqs`` (``required``/``optional``/``none``), ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``; ``unix:///path/redis.sock?db=N`` (also
    ``redis+socket://``); ``sentinel://[user:password@]host:port[/db]`` with several
    Sentinels joined by ``;`` (the master's name comes from the ``master_name`` option).

    Raises:
        ConfigurationError: unknown scheme, non-numeric port or db, unknown query option.
    """
    first = url.split(";", 1)[0]
    parts = urlsplit(first)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    kwargs: dict[str, Any] = {}
    try:
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(
            f"malformed Redis URL {_safe(url)!r}: {exc}", "broker_url"
        ) from None
    if username:
        kwargs["username"] = username
    if password is not None:
        kwargs["password"] = password
    if scheme in ("unix", "redis+socket", "socket"):
        if not parts.path:
            raise ConfigurationError(
                f"{_safe(url)!r} names no socket path (e.g. unix:///run/redis.sock?db=0)",
                key="broker_url",
            )
        kwargs["unix_socket_path"] = parts.path
        db = _db_of(query.pop("db", "0"), url)
    elif scheme in ("redis", "rediss", "sentinel"):
        db = _db_of(parts.path, url)
        kwargs["host"] = parts.hostname or "127.0.0.1"
        kwargs["port"] = port or DEFAULT_PORT
        if scheme == "rediss":
            kwargs["ssl"] = True
            for name in _SSL_QUERY:
                if name in query:
                    kwargs[name] = query.pop(name)
            reqs = kwargs.get("ssl_cert_reqs")
            if isinstance(reqs, str):
                try:
                    kwargs["ssl_cert_reqs"] = _SSL_REQS[reqs.lower()]
                except KeyError:
                    raise ConfigurationError(
                        f"ssl_cert_reqs must be one of required, optional, none; got {reqs!r}",
                        key="broker_url",
                    ) from None
    else:
        raise ConfigurationError(
            f"not a Redis URL: {_safe(url)!r} (use redis://, rediss://, unix:// or sentinel://)",
            key="broker_url",
        )
    if query:
        raise ConfigurationError(
            f"unknown option(s) {sorted(query)} in {_safe(url)!r}; pass transport options "
            "instead (broker_transport_options)",
            key="broker_url",
        )
    sentinels: tuple[tuple[str, int], ...] = ()
    if scheme == "sentinel":
        found = []
        for item in url.split(";"):
            p = urlsplit(item.strip())
            if p.scheme.lower() != "sentinel":
                raise ConfigurationError(
                    f"every part of a Sentinel URL must be sentinel://host:port, got "
                    f"{_safe(item)!r}",
                    key="broker_url",
                )
            try:
                found.append((p.hostname or "127.0.0.1", p.port or 26379))
            except ValueError as exc:
                raise ConfigurationError(f"malformed Sentinel URL: {exc}", "broker_url") from None
        sentinels = tuple(found)
        kwargs.pop("host")
        kwargs.pop("port")
    kwargs["db"] = db
    return Endpoint(kwargs, db, sentinels)


def topic_pattern(binding_key: str) -> str:
    """The regex kombu 5.7 stores for a topic binding (kombu publishers ``re.match`` it)."""
    escaped = "".join(c if c.isalnum() or c in ".#*" else "\\" + c for c in binding_key)
    wildcards = {"*": r"[^\.]+", "#": ".*?"}
    body = r"\.".join(wildcards.get(w, w) for w in escaped.split("."))
    return f"^{body}$"


_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


class Layout:
    """Key and channel names for one prefix, separator, step list and db."""

    def __init__(
        self,
        prefix: str = "",
        sep: str = SEP,
        steps: Sequence[int] = PRIORITY_STEPS,
        db: int = 0,
        fanout_prefix: bool | str = True,
        unacked: str = "unacked",
        unacked_index: str = "unacked_index",
        unacked_mutex: str = "unacked_mutex",
    ) -> None:
        steps = tuple(steps)
        if (
            not steps
            or steps[0] != 0
            or list(steps) != sorted(set(steps))
            or not all(isinstance(s, int) and 0 <= s <= 9 for s in steps)
        ):
            raise ConfigurationError(
                f"priority_steps must be increasing integers from 0 to 9 starting at 0 "
                f"(kombu's default is [0, 3, 6, 9]), got {list(steps)!r}",
                key="priority_steps",
            )
        if not sep:
            raise ConfigurationError("sep must be a non-empty string", key="sep")
        self.prefix = prefix
        self.sep = sep
        self.steps = steps
        self.steps_arg = ",".join(str(s) for s in steps)
        self.db = db
        if fanout_prefix is True:
            self.fanout_prefix = f"/{db}."
        elif fanout_prefix is False:
            self.fanout_prefix = ""
        else:
            self.fanout_prefix = str(fanout_prefix)
        self.unacked = prefix + unacked
        self.unacked_index = prefix + unacked_index
        self.unacked_mutex = prefix + unacked_mutex
        self.lease = prefix + "_celeriac.lease"
        self.exchanges = prefix + "_celeriac.exchanges"
        #: Doorbell channels: ``<this><queue>`` is published when a queue's list fills.
        self.ready_prefix = f"{prefix}_celeriac.ready/{db}/"

    # -- priorities ----------------------------------------------------------------------

    def step(self, priority: int) -> int:
        """kombu's priority step for a priority (clamped to 0..9, as kombu does)."""
        priority = min(max(priority, 0), 9)
        return self.steps[bisect(self.steps, priority) - 1]

    def list_key(self, queue: str, step: int = 0) -> str:
        if step:
            return f"{self.prefix}{queue}{self.sep}{step}"
        return self.prefix + queue

    def list_keys(self, queue: str) -> list[str]:
        return [self.list_key(queue, s) for s in self.steps]

    def delayed_key(self, queue: str) -> str:
        return f"{self.prefix}_celeriac.delayed.{queue}"

    def ttl_key(self, queue: str) -> str:
        return f"{self.prefix}_celeriac.ttl.{queue}"

    # -- bindings ------------------------------------------------------------------------

    def binding_key(self, exchange: str) -> str:
        return f"{self.prefix}_kombu.binding.{exchange}"

    def binding_member(self, routing_key: str, pattern: str, queue: str) -> str:
        return self.sep.join((routing_key, pattern, queue))

    def parse_member(self, member: str) -> tuple[str, str, str] | None:
        parts = member.split(self.sep)
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None

    # -- fanout --------------------------------------------------------------------------

    def fanout_channel(self, exchange: str, routing_key: str) -> str:
        """kombu's PUBLISH channel (``fanout_patterns`` on, kombu's default)."""
        base = f"{self.prefix}{self.fanout_prefix}{exchange}"
        return f"{base}/{routing_key}" if routing_key else base

    def fanout_patterns(self, exchange: str, binding_key: str | None = None) -> tuple[str, ...]:
        """PSUBSCRIBE patterns for a queue bound to ``exchange`` with ``binding_key``.

        A key with ``*`` or ``#`` needs only the channels its words can match, as kombu
        subscribes (``worker.#`` -> ``.../worker.*``), so a gossiping worker does not
        receive every task event; any other key takes every message of the exchange.
        """
        base = _glob_escape(f"{self.prefix}{self.fanout_prefix}{exchange}")
        if binding_key and ("*" in binding_key or "#" in binding_key):
            words = re.split(r"[*#]", binding_key)
            pattern = base + "/" + "*".join(_glob_escape(w) for w in words)
            return (base, pattern) if binding_key.startswith("#") else (pattern,)
        return base, base + "/*"

    def parse_channel(self, channel: str) -> tuple[str, str] | None:
        """``(exchange, routing key)`` of a fanout channel, or None if not one of ours."""
        head = self.prefix + self.fanout_prefix
        if not channel.startswith(head):
            return None
        exchange, _, routing_key = channel[len(head) :].partition("/")
        return exchange, routing_key


# -- the envelope ------------------------------------------------------------------------

#: Properties that describe the envelope rather than the message.
_TRANSPORT_PROPERTIES = ("body_encoding", "delivery_info")


def encode_envelope(
    message: Message,
    exchange: str,
    routing_key: str,
    tag: str,
    priority: int,
    text_body: bool = False,
) -> bytes:
    """kombu's JSON envelope for ``message`` (base64 body, hyphenated content keys).

    With ``text_body`` a JSON body travels as the string it is, with no
    ``body_encoding``, which kombu reads as is (spec section 1, the envelope's ``body``).
    Base64 costs more than everything else in publishing a worker's event packs (about
    0.4 us per event), so fanout messages use it; queued task messages keep base64,
    byte for byte what Celery writes.

    Raises:
        TypeError: a header or property value is not JSON-serialisable.
    """
    properties = dict(message.properties)
    for name in _TRANSPORT_PROPERTIES:
        properties.pop(name, None)
    properties["delivery_info"] = {"exchange": exchange, "routing_key": routing_key}
    properties["priority"] = priority
    body: str | None = None
    if text_body and message.content_type == "application/json":
        try:
            body = message.body.decode("utf-8")
        except UnicodeDecodeError:
            body = None
    if body is None:
        properties["body_encoding"] = "base64"
        body = base64.b64encode(message.body).decode("ascii")
    properties["delivery_tag"] = tag
    envelope = {
        "body": body,
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": message.headers,
        "properties": properties,
    }
    try:
        return orjson.dumps(envelope)
    except TypeError as exc:
        raise TypeError(
            f"message headers and properties must be JSON-serialisable for the Redis "
            f"transport: {exc}"
        ) from None


def _loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # e.g. integers beyond 64 bits, which orjson refuses


def decode_envelope(
    raw: bytes, queue: str, delivery_count: int, receipt: Any
) -> Message:
    """A delivered :class:`Message` from an envelope popped from ``queue``.

    An envelope that cannot be read becomes a message whose body is the raw bytes and
    whose content type says so, so the consumer quarantines it instead of losing it.
    """
    try:
        envelope = _loads(raw)
        props = envelope["properties"]
        body = envelope.get("body")
        headers = envelope.get("headers") or {}
        if type(props) is not dict or type(headers) is not dict:
            raise TypeError("properties and headers must be objects")
        # The transport's own properties (_TRANSPORT_PROPERTIES) leave the dict here:
        # it was parsed for this call alone.
        encoding = props.pop("body_encoding", None)
        info = props.pop("delivery_info", None) or {}
        if type(info) is not dict:
            raise TypeError("properties.delivery_info must be an object")
        if body is None:
            data = b""
        elif encoding == "base64":
            data = base64.b64decode(body, validate=False)
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = orjson.dumps(body)
        content_type = envelope.get("content-type") or "application/data"
        content_encoding = envelope.get("content-encoding") or "binary"
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
        return Message(
            raw,
            {"x-invalid-envelope": f"cannot read the kombu envelope: {exc}"},
            {},
            "application/x-celeriac-invalid-envelope",
            "binary",
            delivery_info={"exchange": "", "routing_key": queue, "queue": queue},
            delivery_count=delivery_count,
            redelivered=delivery_count > 1,
            receipt=receipt,
        )
    redelivered = delivery_count > 1 or bool(info.get("redelivered"))
    if headers.get("redelivered") is True:
        redelivered = True
        headers = {k: v for k, v in headers.items() if k != "redelivered"}
    return Message(
        data,
        headers,
        props,
        content_type,
        content_encoding,
        delivery_info={
            "exchange": info.get("exchange", ""),
            "routing_key": info.get("routing_key", queue),
            "queue": queue,
            "priority": props.get("priority") or 0,
            "redelivered": redelivered,
        },
        delivery_tag=props.get("delivery_tag"),
        redelivered=redelivered,
        delivery_count=delivery_count,
        receipt=receipt,
    )


def mark_redelivered(entry: bytes | str) -> tuple[str, str, str, int, str]:
    """Parse an ``unacked`` entry and flag its envelope as kombu's restore does.

    Returns ``(envelope JSON, exchange, routing key, priority, delivery tag)``.

    Raises:
        ValueError: the entry is not ``[envelope, exchange, routing key]``.
    """
    item = json.loads(entry)
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], dict)):
        raise ValueError("an unacked entry must be [envelope, exchange, routing_key]")
    envelope, exchange, routing_key = item
    headers = envelope.get("headers")
    props = envelope.get("properties")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    priority = 0
    tag = ""
    if isinstance(props, Mapping):
        info = props.get("delivery_info")
        if isinstance(info, dict):
            info["redelivered"] = True
        try:
            priority = int(props.get("priority") or 0)
        except (TypeError, ValueError):
            priority = 0
        tag = str(props.get("delivery_tag") or "")
    return json.dumps(envelope), str(exchange or ""), str(routing_key or ""), priority, tag
