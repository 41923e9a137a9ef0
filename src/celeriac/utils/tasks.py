"""Stopping background asyncio tasks the one way every step needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(
    tasks: asyncio.Task[object] | Iterable[asyncio.Task[object]] | None,
    logger: logging.Logger | None = None,
    what: str = "background task",
) -> None:
    """Cancel ``tasks`` and wait until they have ended.

    A task that ended with an error other than its cancellation (a late broker error
    while stopping, say) is logged at debug level on ``logger``, never raised: stopping
    must go on.
    """
    if tasks is None:
        return
    pending = [tasks] if isinstance(tasks, asyncio.Task) else list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            if logger is not None:
                logger.debug("%s ended with %r", what, exc)
