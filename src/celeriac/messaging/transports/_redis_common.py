"""What the Redis transport and the Redis result store share: option checks and errors.

Both take a dict of options named like kombu's and Celery's, and both meet redis-py's
exceptions at their boundary; one implementation keeps their messages alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from redis import exceptions as redis_errors

from ...exceptions import (
    BrokerConnectionError,
    CeleriacError,
    ConfigurationError,
    ConnectionBrokenError,
)

__all__ = ["CONNECTION_ERRORS", "check_options", "map_redis_errors"]

#: redis-py failures that mean the connection broke (reconnecting may help).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    OSError,
)

#: option -> (converter raising TypeError/ValueError on a bad value, what it must be).
Checks = Mapping[str, tuple[Callable[[Any], Any], str]]


def check_options(options: Mapping[str, Any], checks: Checks, setting: str) -> dict[str, Any]:
    """Every option converted by its checker.

    Raises:
        ConfigurationError: An unknown key (naming the closest known one), or a value of
            the wrong kind (saying what it must be; a password is never shown).
    """
    checked: dict[str, Any] = {}
    for key, value in options.items():
        check = checks.get(key)
        if check is None:
            raise ConfigurationError.unknown_key(str(key), checks, f"{setting} key for redis")
        func, what = check
        try:
            checked[key] = func(value)
        except (TypeError, ValueError):
            shown = "**" if key == "password" else repr(value)
            raise ConfigurationError(
                f"{setting}[{key!r}] must be {what}, got {shown}", key=key
            ) from None
    return checked


@contextlib.contextmanager
def map_redis_errors(role: str, where: str, setting: str) -> Iterator[None]:
    """Turn redis-py's exceptions into celeriac's.

    Args:
        role: What the server is to us, as users read it ("broker", "result backend").
        where: The server, as shown to users (its masked URL).
        setting: The setting that names the server (for credential errors).

    Raises:
        ConfigurationError: Authentication failed (wrong user or password).
        ConnectionBrokenError: The connection failed or timed out.
        BrokerConnectionError: Redis refused the command (out of memory, no permission).
    """
    try:
        yield
    except CeleriacError:
        raise  # already ours (ConnectionBrokenError is an OSError too)
    except redis_errors.AuthenticationError as exc:
        raise ConfigurationError(
            f"{role} {where} refused the credentials: {exc}", key=setting
        ) from exc
    except CONNECTION_ERRORS as exc:
        raise ConnectionBrokenError(f"{role} {where}: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise BrokerConnectionError(f"{role} {where} refused a command: {exc}") from exc
