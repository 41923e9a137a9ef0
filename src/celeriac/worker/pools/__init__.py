"""Execution pools: where task functions run (``-P solo|threads|prefork|asyncio``).

Every pool implements :class:`~celeriac.worker.pools.base.Pool`. Choose by workload:

- ``prefork`` (alias ``processes``, the default): one child process per slot; CPU-bound
  code, hard time limits that really kill, crashes contained in a child.
- ``threads``: I/O-bound sync code; cheap, but a hard time limit can only abandon a thread.
- ``asyncio``: ``async def`` tasks as asyncio tasks on the worker's own loop (sync tasks
  go to threads).
- ``solo``: one task at a time on the worker's loop thread; debugging and tiny workers.
"""

from __future__ import annotations

from ...exceptions import ConfigurationError
from .asyncio import AsyncioPool
from .base import Job, OnDone, OnStart, Outcome, Pool
from .prefork import PreforkPool
from .solo import SoloPool
from .threads import ThreadsPool

__all__ = [
    "Job",
    "Outcome",
    "Pool",
    "OnStart",
    "OnDone",
    "SoloPool",
    "ThreadsPool",
    "PreforkPool",
    "AsyncioPool",
    "POOLS",
    "get_pool_cls",
]

#: ``-P`` name -> pool class.
POOLS: dict[str, type[Pool]] = {
    "prefork": PreforkPool,
    "processes": PreforkPool,
    "threads": ThreadsPool,
    "asyncio": AsyncioPool,
    "solo": SoloPool,
}


def get_pool_cls(name: str) -> type[Pool]:
    """The pool class registered as ``name``.

    Raises:
        ConfigurationError: for an unknown name; the message lists the known ones.
    """
    try:
        return POOLS[name]
    except (KeyError, TypeError):
        err = ConfigurationError.unknown_key(str(name), POOLS, what="pool")
        raise ConfigurationError(
            f"{err}; choose one of: {', '.join(sorted(POOLS))}",
            key=err.key,
            suggestion=err.suggestion,
        ) from None
