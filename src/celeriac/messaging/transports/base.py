"""The contract every broker transport fulfils.

A transport is one connection to one broker, driven from one asyncio event loop (the loop
that called :meth:`Transport.connect`); its methods are coroutines. Every method that moves
messages takes a *batch*, because the worker coalesces everything one loop iteration
produces into one broker call: that shape, not later tuning, is where speed comes from.

Delivery contract (at least once): a message is in a queue, or claimed by one consumer
under a lease and not yet settled, or settled and gone. A claim whose lease passes without
an ack (the holder died or hung) makes the message claimable again, with
``redelivered=True`` and a higher ``delivery_count``. Live holders call :meth:`extend`.
Acks carry the claim's ``receipt`` so a stale ack cannot remove a newer claim.

Errors: a transport maps its client library's exceptions at this boundary to
:class:`~celeriac.exceptions.ConnectionBrokenError` (reconnect may help) or
:class:`~celeriac.exceptions.ConnectionClosedError` (used after close).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from ...exceptions import ConfigurationError
from ...utils.ids import uuid4_hex
from ..entities import Exchange, Queue
from ..message import Message

__all__ = [
    "Transport",
    "Outgoing",
    "ExchangeNotFound",
    "QUARANTINE_QUEUE",
    "mask_url",
    "new_delivery_tag",
]

#: Where messages that cannot be processed (undecodable, disallowed content, unknown task)
#: are moved, with their original bytes and a reason header, instead of being dropped.
QUARANTINE_QUEUE = "celeriac.quarantine"

#: Default lease, in seconds, before an unsettled claim returns to its queue.
DEFAULT_VISIBILITY_TIMEOUT = 1800.0


@dataclass(slots=True)
class Outgoing:
    """One message to publish: where to, and from when it may be delivered."""

    message: Message
    exchange: str
    routing_key: str
    #: Epoch seconds before which the message must not be delivered (None: at once).
    not_before: float | None = None


class ExchangeNotFound(ConfigurationError, LookupError):
    """A message was published to an exchange nobody declared.

    Transports that emulate exchanges refuse this instead of declaring a direct exchange
    on the fly, because a guessed type routes wrongly (a topic or fanout exchange declared
    later would disagree). Declare the exchange, or a queue bound to it, first. The
    nameless default exchange ``""`` always exists.
    """

    def __init__(self, exchange: str, known: Sequence[str] = ()) -> None:
        import difflib

        close = difflib.get_close_matches(exchange, [k for k in known if k], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"exchange {exchange!r} was never declared: declare it (or a queue bound to it) "
            f"before publishing to it{hint}",
            key=exchange,
            suggestion=close[0] if close else None,
        )
        self.exchange = exchange


def new_delivery_tag() -> str:
    return uuid4_hex()


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``**`` (for banners, logs and reprs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:**@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Transport(abc.ABC):
    """One broker connection. Subclasses live in one module each under ``transports/``."""

    #: URL schemes this transport serves.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when ``Outgoing.not_before`` is honoured by the broker itself.
    supports_delayed_delivery: ClassVar[bool] = False
    #: Default polling interval (s) for transports that must poll.
    polling_interval: ClassVar[float] = 0.0
    #: True where the broker serves lower priority numbers first (Celery on Redis);
    #: otherwise higher numbers go first, as on RabbitMQ.
    lower_priority_first: ClassVar[bool] = False
    #: Type of the ``celeryev`` events exchange on this broker: topic, as Celery declares
    #: it on AMQP, unless the broker routes events by PUB/SUB (fanout, Celery on Redis).
    event_exchange_type: ClassVar[str] = "topic"

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        #: Seconds a claim is held before the message returns to its queue.
        self.visibility_timeout = float(
            self.options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    # -- lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise ConnectionBrokenError if the broker is unreachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close; unsettled claims are left to their leases (or returned, if cheap)."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    # -- topology ----------------------------------------------------------------------

    @abc.abstractmethod
    async def declare_exchange(self, exchange: Exchange) -> None: ...

    @abc.abstractmethod
    async def declare_queue(self, queue: Queue) -> None:
        """Create the queue (idempotent), its exchange and every binding it names."""

    @abc.abstractmethod
    async def delete_queue(self, name: str) -> None: ...

    # -- moving messages ---------------------------------------------------------------

    @abc.abstractmethod
    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """Route and store every message; return only once the broker holds them all.

        A message routed to no queue is dropped, as AMQP does for unroutable messages.
        """

    def publish_sync(self, batch: Sequence[Outgoing]) -> bool:
        """Publish from sync code without an event loop, if this transport can do so here.

        True once the broker holds every message, as :meth:`publish`; False when nothing
        was stored and the caller must use :meth:`publish` (which reconnects, retries and
        raises). Transports whose sync path would be no cheaper than the loop's keep this
        default.
        """
        return False

    @abc.abstractmethod
    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Message]:
        """Claim up to ``limit`` messages from ``queues``, waiting up to ``timeout`` s for one.

        Higher priority first within a queue; queues served in fair rotation across calls.
        Returns an empty list on timeout. Each message comes back with ``delivery_info``
        (``exchange``, ``routing_key``, ``queue``), ``delivery_tag``, ``redelivered``,
        ``delivery_count`` and ``receipt`` set.
        """

    @abc.abstractmethod
    async def ack(self, messages: Sequence[Message]) -> None:
        """Remove settled messages. Stale receipts (lease lost) are ignored, not errors."""

    @abc.abstractmethod
    async def reject(self, messages: Sequence[Message], requeue: bool) -> None:
        """Return to their queue (``requeue``) at once, or remove them."""

    @abc.abstractmethod
    async def extend(self, messages: Sequence[Message], seconds: float | None = None) -> None:
        """Push the leases of held messages ``seconds`` (default: visibility timeout) ahead."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Remove every ready message of a queue; return how many."""

    @abc.abstractmethod
    async def queue_length(self, queue: str) -> int:
        """Messages waiting in the queue (ready and delayed; not those claimed)."""

    # -- shared behaviour --------------------------------------------------------------

    async def quarantine(self, messages: Sequence[Message], reason: str) -> None:
        """Move unprocessable messages to :data:`QUARANTINE_QUEUE` with ``reason``.

        The original body, content type and headers are kept, so nothing is lost and an
        operator can inspect or replay them.
        """
        await self.declare_queue(Queue(QUARANTINE_QUEUE, Exchange("")))
        now = time.time()
        batch = [
            Outgoing(
                m.copy_for_publish(
                    {
                        "x-quarantine-reason": reason,
                        "x-quarantined-at": now,
                        "x-original-queue": m.delivery_info.get("queue"),
                    }
                ),
                "",
                QUARANTINE_QUEUE,
            )
            for m in messages
        ]
        await self.publish(batch)
        await self.ack(messages)
