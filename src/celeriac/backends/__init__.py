"""Result stores: pick one by URL.

``result_backend`` settings name a store by URL scheme: ``memory://`` (this process),
``sqlite:///path.db`` (one machine, the default broker's file), ``redis://`` (Celery's
layout). No URL, or ``disabled``, means results are not kept: writes are dropped on
purpose (the task was configured that way) and reads fail loudly instead of waiting
forever for a result that will never come.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from ..exceptions import ConfigurationError
from .base import Backend, Meta, pending_meta

__all__ = ["Backend", "DisabledBackend", "Meta", "get_backend_cls", "known_schemes", "pending_meta"]

#: Scheme -> "module:Class", imported on first use (a client library may be optional).
_BACKENDS: dict[str, str] = {
    "memory": "celeriac.backends.memory:MemoryBackend",
    "sqlite": "celeriac.backends.sqlite:SQLiteBackend",
    "redis": "celeriac.backends.redis:RedisBackend",
    "rediss": "celeriac.backends.redis:RedisBackend",
}
_DISABLED = frozenset({"", "disabled", "none"})


class DisabledBackend(Backend):
    """The store used when no ``result_backend`` is configured.

    Storing is a no-op (the worker may still report outcomes); every read raises a
    :class:`~celeriac.exceptions.ConfigurationError`, because a caller waiting on a
    result that is never kept would otherwise wait forever.
    """

    schemes = ("disabled",)

    def __init__(self, url: str | None = "disabled", **kwargs: object) -> None:
        super().__init__(url or "disabled", **kwargs)  # type: ignore[arg-type]

    def _refuse(self) -> ConfigurationError:
        return ConfigurationError(
            "no result backend configured: set result_backend (for example "
            "'sqlite:///celeriac.db' or 'redis://localhost:6379/1') to read task results",
            key="result_backend",
        )

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def store_many(self, items: Sequence[tuple[str, Meta]]) -> None:
        return None

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        raise self._refuse()

    async def wait_for(self, task_id: str, timeout: float | None) -> Meta:
        raise self._refuse()

    async def forget(self, task_ids: Sequence[str]) -> None:
        return None

    async def cleanup(self) -> int:
        return 0


def known_schemes() -> list[str]:
    """URL schemes :func:`get_backend_cls` understands."""
    return sorted([*_BACKENDS, "disabled"])


def get_backend_cls(url: str | None) -> type[Backend]:
    """The Backend class for a ``result_backend`` URL (not instantiated, not connected).

    Raises:
        ConfigurationError: Unknown scheme (the message lists the known ones), or the
            store's module cannot be imported.
    """
    if url is None:
        return DisabledBackend
    if not isinstance(url, str):
        raise ConfigurationError(
            f"result_backend must be a URL string, got {type(url).__name__}: {url!r}",
            key="result_backend",
        )
    scheme = url.split("://", 1)[0].strip().lower() if "://" in url else url.strip().lower()
    if scheme in _DISABLED:
        return DisabledBackend
    target = _BACKENDS.get(scheme)
    if target is None:
        raise ConfigurationError(
            f"unknown result backend scheme {scheme!r} in {_mask(url)!r}; "
            f"known: {', '.join(known_schemes())}",
            key="result_backend",
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme!r} result backend is not available: {exc}", key="result_backend"
        ) from exc
    cls: type[Backend] = getattr(module, attr)
    return cls


def _mask(url: str) -> str:
    from ..messaging.transports.base import mask_url

    return mask_url(url)
