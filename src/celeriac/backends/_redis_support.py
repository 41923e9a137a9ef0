"""Pieces of the Redis result store that do not need a connection.

Transport options, Celery's key prefix rule, the Lua script that writes a batch of metas
under the ready-state guard, content sniffing for stored metas, and the mapping of
redis-py's exceptions to celeriac's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import serialization, states
from ..exceptions import ConfigurationError
from ..messaging.transports._redis_common import check_options, map_redis_errors

__all__ = [
    "RedisOptions",
    "STORE_LUA",
    "TASK_KEYPREFIX",
    "GROUP_KEYPREFIX",
    "expiry_args",
    "global_prefix",
    "map_errors",
    "sniff_content_type",
]

#: Celery's key prefixes (spec/celery-wire.md section 3.1).
TASK_KEYPREFIX = "celery-task-meta-"
GROUP_KEYPREFIX = "celery-taskset-meta-"

#: Redis refuses string values above 512 MiB (``proto-max-bulk-len``); Celery checks first.
MAX_VALUE_SIZE = 512 * 1024 * 1024

_READY_LUA = ", ".join(f"{s}=true" for s in sorted(states.READY_STATES))

#: Writes a batch of metas in one call, item by item, in order.
#:
#: KEYS: result keys. ARGV[1]: expiry mode ("" none, "EX" seconds, "PX" milliseconds);
#: ARGV[2]: the amount; then (status, body) per key. For each item, the stored status is
#: read (from the JSON text without decoding when it starts with ``{"status": ...``, else
#: by decoding JSON or msgpack); SUCCESS is never replaced and a ready state is replaced
#: only by a ready one. A written item is set like Celery's SETEX and published on the
#: channel named like its key. Returns how many items were written. Running as one
#: script makes the read-check-write atomic: two writers cannot interleave.
STORE_LUA = f"""
local ready = {{{_READY_LUA}}}
local function status_of(value)
  local s = string.match(value, '^{{%s*"status"%s*:%s*"([^"\\\\]*)"')
  if s then return s end
  local b = string.byte(value, 1)
  local ok, t = false, nil
  if b == 123 or b == 32 or b == 10 or b == 13 or b == 9 then
    ok, t = pcall(cjson.decode, value)
  elseif b and ((b >= 128 and b <= 143) or b == 222 or b == 223) then
    ok, t = pcall(cmsgpack.unpack, value)
  end
  if ok and type(t) == 'table' and type(t['status']) == 'string' then return t['status'] end
  return nil
end
local mode, amount = ARGV[1], ARGV[2]
local written = 0
for i, key in ipairs(KEYS) do
  local status, body = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local keep = false
  local old = redis.pcall('GET', key)
  if type(old) == 'string' then
    local was = status_of(old)
    if was == 'SUCCESS' or (was and ready[was] and not ready[status]) then keep = true end
  end
  if not keep then
    if mode == 'EX' then
      redis.call('SETEX', key, amount, body)
    elseif mode == 'PX' then
      redis.call('PSETEX', key, amount, body)
    else
      redis.call('SET', key, body)
    end
    redis.call('PUBLISH', key, body)
    written = written + 1
  end
end
return written
"""


def global_prefix(options: Mapping[str, Any]) -> str:
    """The ``global_keyprefix`` as Celery's result backend applies it.

    Celery appends ``_`` unless the prefix already ends with ``:``, ``_``, ``-`` or ``.``
    (so ``rpfx`` gives ``rpfx_celery-task-meta-<id>``). The broker side uses the prefix
    verbatim; only the result keys get the underscore.
    """
    prefix = options.get("global_keyprefix") or ""
    if not isinstance(prefix, str):
        raise ConfigurationError(
            f"global_keyprefix must be a string, got {type(prefix).__name__}: {prefix!r}",
            key="global_keyprefix",
        )
    if prefix and prefix[-1] not in ":_-.":
        prefix += "_"
    return prefix


def expiry_args(expires: float | None) -> tuple[str, str]:
    """Lua expiry mode and amount: whole seconds as Celery's SETEX, else milliseconds.

    Celery truncates ``result_expires`` to whole seconds; a fraction here becomes a
    millisecond expiry (PSETEX) instead of being rounded away.
    """
    if not expires:
        return "", "0"
    if float(expires).is_integer():
        return "EX", str(int(expires))
    return "PX", str(max(1, math.ceil(expires * 1000)))


def sniff_content_type(body: bytes, default: str) -> tuple[str, str]:
    """The ``(content_type, content_encoding)`` a stored meta was written with.

    Redis keeps only the bytes; Celery decodes them with its own serializer. Recognising
    JSON, msgpack and pickle from their first bytes lets the accept list be checked
    against what was really stored (a JSON-only reader refuses a pickled meta with
    ContentDisallowed instead of a confusing decode error) and lets a reader decode a
    meta written with another accepted serializer. Anything else is taken to be in the
    configured ``default`` serializer.
    """
    if body:
        first = body[0]
        if first in b"{[ \t\r\n":
            return "application/json", "utf-8"
        if first == 0x80 and len(body) > 1 and 2 <= body[1] <= 5:
            return "application/x-python-serialize", "binary"
        if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
            return "application/x-msgpack", "binary"
    codec = serialization.codec_for(default)
    return codec.content_type, codec.content_encoding


# -- options ------------------------------------------------------------------------------


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    return float(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _opt_float(value: Any) -> float | None:
    return None if value is None else _float(value)


_CERT_REQS = {"required": "required", "optional": "optional", "none": "none"}


def _cert_reqs(value: Any) -> str:
    text = _str(value).lower().removeprefix("cert_")
    if text not in _CERT_REQS:
        raise TypeError
    return _CERT_REQS[text]


#: result_backend_transport_options -> (checker, what the value must be).
_CHECKS: dict[str, tuple[Any, str]] = {
    "global_keyprefix": (_str, "a string"),
    "result_chord_ordered": (_bool, "true or false"),
    "health_check_interval": (_float, "seconds"),
    "max_connections": (_int, "a whole number"),
    "socket_timeout": (_opt_float, "seconds or None"),
    "socket_connect_timeout": (_opt_float, "seconds or None"),
    "socket_keepalive": (_bool, "true or false"),
    "client_name": (_str, "a string"),
    "username": (_str, "a string"),
    "password": (_str, "a string"),
    "ssl_cert_reqs": (_cert_reqs, "required, optional or none"),
    "ssl_ca_certs": (_str, "a file path"),
    "ssl_certfile": (_str, "a file path"),
    "ssl_keyfile": (_str, "a file path"),
}


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Checked ``result_backend_transport_options`` of the Redis result store.

    Attributes:
        global_keyprefix: Prepended to every key and channel (Celery's underscore rule).
        result_chord_ordered: Chord results kept in a sorted set (True) or a list.
        health_check_interval: Seconds of silence before the subscription is PINGed.
        max_connections: Command connections in the pool (callers wait for a free one).
        connection: Keyword arguments for redis-py's connection pool.
    """

    global_keyprefix: str = ""
    result_chord_ordered: bool = True
    health_check_interval: float = 25.0
    max_connections: int = 10
    connection: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> RedisOptions:
        """Check every key and value.

        Raises:
            ConfigurationError: Unknown key (with the closest known one) or a value of
                the wrong kind.
        """
        checked = check_options(options, _CHECKS, "result_backend_transport_options")
        if checked.get("max_connections", 10) < 1:
            raise ConfigurationError(
                "result_backend_transport_options['max_connections'] must be at least 1",
                key="max_connections",
            )
        if checked.get("health_check_interval", 25.0) < 0:
            raise ConfigurationError(
                "result_backend_transport_options['health_check_interval'] must not be "
                "negative (0 disables the check)",
                key="health_check_interval",
            )
        connection = {"socket_timeout": 120.0, "socket_connect_timeout": 10.0}
        for key in _CHECKS:
            if key in checked and key.startswith(("socket_", "ssl_", "client_", "user", "pass")):
                connection[key] = checked[key]
        return cls(
            global_keyprefix=global_prefix(checked),
            result_chord_ordered=checked.get("result_chord_ordered", True),
            health_check_interval=checked.get("health_check_interval", 25.0),
            max_connections=checked.get("max_connections", 10),
            connection=connection,
        )


# -- errors -------------------------------------------------------------------------------


def map_errors(where: str) -> contextlib.AbstractContextManager[None]:
    """Turn redis-py's exceptions into celeriac's at the backend's boundary.

    Args:
        where: The store, as shown to users (its masked URL).
    """
    return map_redis_errors("result backend", where, "result_backend")
