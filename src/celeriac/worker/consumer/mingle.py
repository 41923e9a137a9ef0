"""The consumer's Mingle step: at start, learn what the other workers know.

Before consuming, the worker broadcasts ``hello`` (spec section 6.1) with its own revoked
ids and waits up to ``mingle_timeout`` (1 s, Celery's) for the live workers' answers; it
merges every revoked id they report and moves its Lamport clock past theirs. A revoke sent
while this worker was down is therefore still honoured once it starts, as long as one
worker that heard it is alive.

Skipped with ``--without-mingle``. The :class:`RevocationLog` step, which runs just before
it even then, reads the *revocation log* (:func:`celeriac.control.read_revocations`): the
revokes celeriac clients sent while no worker at all was listening.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...control import read_revocations
from ...exceptions import BrokerConnectionError
from ..bootsteps import Step
from .control import mailbox_for
from .steps import Connection

if TYPE_CHECKING:
    from .consumer import Consumer

__all__ = ["Mingle", "RevocationLog", "MINGLE_TIMEOUT"]

logger = logging.getLogger("celeriac.worker.mingle")

#: Seconds to wait for ``hello`` replies (Celery's).
MINGLE_TIMEOUT = 1.0


class RevocationLog(Step):
    """Merges the broker's revocation log into the revoked ids before consuming starts."""

    label = "RevocationLog"
    requires = (Connection,)

    async def start(self, c: Consumer) -> None:
        assert c.connection is not None
        try:
            ids = await read_revocations(c.connection, c.app.conf)
        except BrokerConnectionError:
            raise
        except Exception as exc:
            logger.warning("cannot read the revocation log: %r", exc)
            return
        if ids:
            c.state.revoked.update(ids)
            logger.info("%d revoked id(s) from the revocation log", len(ids))


class Mingle(Step):
    """Syncs revoked ids and the clock with the live workers (see the module docstring)."""

    label = "Mingle"
    requires = (Connection, RevocationLog)

    def __init__(self, parent: Consumer, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self.timeout = MINGLE_TIMEOUT
        #: Nodes that answered at the last start.
        self.peers: list[str] = []

    def include_if(self, c: Consumer) -> bool:
        return not getattr(c.worker, "without_mingle", False)

    async def start(self, c: Consumer) -> None:
        await self.sync(c)

    async def sync(self, c: Consumer) -> int:
        """Broadcast ``hello`` and merge the replies; returns how many nodes answered."""
        mailbox = mailbox_for(c)
        state = c.state
        replies = await mailbox.call(
            "hello",
            {"from_node": c.hostname, "revoked": state.revoked.as_dict(pairs=True)},
            timeout=self.timeout,
        )
        peers = []
        for reply in replies:
            if reply.hostname == c.hostname or not isinstance(reply.value, dict):
                continue
            peers.append(reply.hostname)
            self._merge(c, reply.hostname, reply.value)
        self.peers = peers
        if peers:
            logger.info("mingle: sync with %d nodes", len(peers))
        else:
            logger.info("mingle: all alone")
        return len(peers)

    def _merge(self, c: Consumer, hostname: str, value: dict[str, Any]) -> None:
        clock = value.get("clock")
        if isinstance(clock, int) and not isinstance(clock, bool):
            c.worker.clock.adjust(clock)
        else:
            c.worker.clock.forward()
        revoked = value.get("revoked")
        if revoked:
            try:
                c.state.revoked.update(revoked)
            except (ValueError, TypeError) as exc:
                logger.warning("mingle: bad revoked ids from %s: %s", hostname, exc)
