"""The Redis transport's options (``broker_transport_options``), checked once.

kombu's option names are accepted with kombu's meanings, so a Celery configuration moves
over unchanged; a name that is neither kombu's nor ours is an error naming the closest
known one, and a value of the wrong kind says what it must be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._redis_common import check_options
from ._redis_layout import PRIORITY_STEPS, SEP

__all__ = ["RedisTransportOptions", "KOMBU_VISIBILITY_TIMEOUT"]

#: kombu's default visibility timeout on Redis (s). Kept so that Celery workers sharing the
#: queues judge our claims by the same clock they judge their own.
KOMBU_VISIBILITY_TIMEOUT = 3600.0


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    if value < 0:
        raise ValueError
    return float(value)


def _opt_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError
    return value


def _opt_count(value: Any) -> int | None:
    return None if value is None else _count(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _steps(value: Any) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise TypeError
    return tuple(value)


def _fanout_prefix(value: Any) -> bool | str:
    if not isinstance(value, bool | str):
        raise TypeError
    return value


def _strategy(value: Any) -> str:
    if value not in ("round_robin", "priority", "sorted"):
        raise TypeError
    return str(value)


def _base64(value: Any) -> str:
    if value != "base64":
        raise TypeError
    return str(value)


def _true(value: Any) -> bool:
    if value is not True:
        raise TypeError
    return True


#: option -> (checker, what the value must be).
_CHECKS: dict[str, tuple[Any, str]] = {
    "global_keyprefix": (_text, "a string"),
    "sep": (_text, "a non-empty string"),
    "priority_steps": (_steps, "a list of integers from 0 to 9, starting at 0"),
    "queue_order_strategy": (_strategy, "'round_robin', 'priority' or 'sorted'"),
    "visibility_timeout": (_number, "seconds (a non-negative number)"),
    "unacked_key": (_text, "a string"),
    "unacked_index_key": (_text, "a string"),
    "unacked_mutex_key": (_text, "a string"),
    "unacked_mutex_expire": (_number, "seconds"),
    "unacked_restore_limit": (_opt_count, "a positive whole number or None"),
    "unacked_restore_interval": (_opt_number, "seconds or None"),
    "unacked_restore_throttle": (_opt_count, "a positive whole number or None"),
    "fanout_prefix": (_fanout_prefix, "True, False or a string"),
    "fanout_patterns": (_bool, "True or False"),
    "fanout_buffer_limit": (_count, "a positive whole number"),
    "body_encoding": (_base64, "'base64' (the only encoding Celery peers read)"),
    "ack_emulation": (_true, "True (acknowledgements cannot be switched off here)"),
    "polling_interval": (_opt_number, "seconds or None"),
    "delivery_record_ttl": (_number, "seconds"),
    "sync_publish_spin": (_number, "seconds (0 switches it off)"),
    "max_connections": (_count, "a positive whole number"),
    "socket_timeout": (_opt_number, "seconds or None"),
    "socket_connect_timeout": (_opt_number, "seconds or None"),
    "socket_keepalive": (_bool, "True or False"),
    "health_check_interval": (_number, "seconds"),
    "retry_on_timeout": (_bool, "True or False"),
    "client_name": (_text, "a string"),
    "username": (_text, "a string"),
    "password": (_text, "a string"),
    "master_name": (_text, "a string"),
    "sentinel_kwargs": (dict, "a dict"),
}


@dataclass(frozen=True, slots=True)
class RedisTransportOptions:
    """Checked options of one Redis transport (see the module docstring)."""

    global_keyprefix: str = ""
    sep: str = SEP
    priority_steps: tuple[int, ...] = PRIORITY_STEPS
    queue_order_strategy: str = "round_robin"
    visibility_timeout: float = KOMBU_VISIBILITY_TIMEOUT
    unacked_key: str = "unacked"
    unacked_index_key: str = "unacked_index"
    unacked_mutex_key: str = "unacked_mutex"
    #: Seconds the restore mutex is held at most (kombu's ``unacked_mutex_expire``).
    unacked_mutex_expire: float = 300.0
    #: Most unacked entries looked at per restore pass.
    unacked_restore_limit: int = 1000
    #: Seconds between two restore passes (None: a quarter of the visibility timeout,
    #: between 50 ms and 10 s).
    unacked_restore_interval: float | None = None
    fanout_prefix: bool | str = True
    fanout_patterns: bool = True
    #: Fanout messages buffered per local queue before the oldest are dropped.
    fanout_buffer_limit: int = 10_000
    #: Seconds between two looks at the queues when nothing rang (Celery publishers don't).
    polling_interval: float = 0.1
    #: Seconds a delivery counter outlives its last claim.
    delivery_record_ttl: float = 7 * 86400.0
    #: Seconds a sync ``delay()`` polls for Redis's reply before sleeping (see
    #: ``_redis_sync.SyncPublisher``); 0 always sleeps. A push that may hand its message
    #: to a waiting celeriac worker never polls.
    sync_publish_spin: float = 100e-6
    master_name: str | None = None
    #: Keyword arguments for redis-py's client (connection tuning and credentials).
    client: dict[str, Any] = field(default_factory=dict)
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> RedisTransportOptions:
        """Check every key and value.

        Raises:
            ConfigurationError: An unknown key (naming the closest known one) or a value
                of the wrong kind.
        """
        checked = check_options(options, _CHECKS, "broker_transport_options")
        client: dict[str, Any] = {
            "socket_timeout": 120.0,
            "socket_connect_timeout": 10.0,
            "health_check_interval": 25.0,
            "max_connections": 50,
        }
        for key in (
            "socket_timeout",
            "socket_connect_timeout",
            "socket_keepalive",
            "health_check_interval",
            "retry_on_timeout",
            "client_name",
            "username",
            "password",
            "max_connections",
        ):
            if key in checked:
                client[key] = checked.pop(key)
        polling = checked.pop("polling_interval", None)
        checked.pop("body_encoding", None)
        checked.pop("ack_emulation", None)
        checked.pop("unacked_restore_throttle", None)  # kombu's; our interval replaces it
        limit = checked.pop("unacked_restore_limit", None)
        return cls(
            **checked,
            client=client,
            **({"polling_interval": polling} if polling is not None else {}),
            **({"unacked_restore_limit": limit} if limit is not None else {}),
        )

    @property
    def restore_interval(self) -> float:
        if self.unacked_restore_interval is not None:
            return self.unacked_restore_interval
        return min(10.0, max(0.05, self.visibility_timeout / 4))
