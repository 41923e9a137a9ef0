"""Broker transports, one module each, chosen by the URL's scheme.

Modules are imported only when their scheme is used, so ``redis://`` or ``amqp://`` client
libraries are needed only by the processes that talk to those brokers.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ...exceptions import ConfigurationError
from .base import (
    DEFAULT_VISIBILITY_TIMEOUT,
    QUARANTINE_QUEUE,
    ExchangeNotFound,
    Outgoing,
    Transport,
    mask_url,
    new_delivery_tag,
)

__all__ = [
    "TRANSPORTS",
    "DEFAULT_VISIBILITY_TIMEOUT",
    "QUARANTINE_QUEUE",
    "ExchangeNotFound",
    "Outgoing",
    "Transport",
    "get_transport_cls",
    "mask_url",
    "new_delivery_tag",
    "scheme_of",
]

#: URL scheme -> ``"module:ClassName"`` of the transport serving it.
TRANSPORTS: dict[str, str] = {
    "memory": "celeriac.messaging.transports.memory:MemoryTransport",
    "sqlite": "celeriac.messaging.transports.sqlite:SQLiteTransport",
    "redis": "celeriac.messaging.transports.redis:RedisTransport",
    "rediss": "celeriac.messaging.transports.redis:RedisTransport",
    "unix": "celeriac.messaging.transports.redis:RedisTransport",
    "redis+socket": "celeriac.messaging.transports.redis:RedisTransport",
    "sentinel": "celeriac.messaging.transports.redis:RedisTransport",
    "amqp": "celeriac.messaging.transports.amqp:AmqpTransport",
    "amqps": "celeriac.messaging.transports.amqp:AmqpTransport",
}


def scheme_of(url: str) -> str:
    """The transport scheme of a broker URL (``"sqlite"`` for ``sqlite:///x.db``).

    Raises:
        ConfigurationError: the URL has no ``scheme://`` part.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"broker URL {url!r} has no scheme: expected e.g. 'sqlite:///celeriac.db', "
            "'memory://', 'redis://localhost:6379/0' or 'amqp://guest@localhost//'",
            key="broker_url",
        )
    return urlsplit(url).scheme.lower()


def get_transport_cls(url: str) -> type[Transport]:
    """The Transport class serving ``url``'s scheme, imported on first use.

    Raises:
        ConfigurationError: the scheme is unknown (the message lists the known ones), or
            its module cannot be imported (usually a missing optional dependency).
    """
    scheme = scheme_of(url)
    target = TRANSPORTS.get(scheme)
    if target is None:
        known = ", ".join(sorted(TRANSPORTS))
        raise ConfigurationError(
            f"unknown broker transport {scheme!r} in {mask_url(url)!r}; known schemes: {known}",
            key="broker_url",
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme!r} transport cannot be loaded ({exc}); is its client library installed?",
            key="broker_url",
        ) from exc
    cls: type[Transport] = getattr(module, attr)
    return cls
