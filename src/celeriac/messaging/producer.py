"""Publishing: "sent" means the broker holds the message.

:meth:`Producer.publish` returns only after the transport stored the message (a committed
SQLite transaction, the Redis reply, an AMQP publisher confirm). Broken connections are
retried through :meth:`Connection.retrying`, so a publish is at least once.
"""

from __future__ import annotations

from collections.abc import Sequence

from .connection import Connection
from .entities import Queue
from .message import Message
from .transports.base import Outgoing, Transport

__all__ = ["Producer"]


class Producer:
    """Publishes messages on a connection, declaring target queues once per connection.

    The declaration cache is keyed by queue name and forgotten on reconnect, because a
    broker restart may have lost non-durable queues.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._declared: set[str] = set()
        self._declared_generation = -1

    def __repr__(self) -> str:
        return f"<Producer {self.connection.as_uri()}>"

    async def publish(
        self,
        message: Message,
        exchange: str = "",
        routing_key: str = "",
        *,
        not_before: float | None = None,
        declare: Sequence[Queue] = (),
    ) -> None:
        """Publish one message.

        Args:
            message: What to send; its body must already be encoded bytes.
            exchange: Exchange name; ``""`` routes to the queue named ``routing_key``.
            routing_key: Routing key (the queue name for the default exchange).
            not_before: Epoch seconds before which the message must not be delivered.
            declare: Queues to declare first (once per connection).

        Raises:
            ExchangeNotFound: ``exchange`` was never declared.
            BrokerConnectionError: the broker stayed unreachable.
        """
        await self.publish_many((Outgoing(message, exchange, routing_key, not_before),), declare)

    async def publish_many(self, batch: Sequence[Outgoing], declare: Sequence[Queue] = ()) -> None:
        """Publish a batch in one broker call (see :meth:`publish`)."""
        if not batch:
            return
        for out in batch:
            if not isinstance(out, Outgoing):
                raise TypeError(f"publish_many() takes Outgoing items, not {out!r}")
            if not isinstance(out.message, Message):
                raise TypeError(f"can only publish Message objects, not {out.message!r}")

        attempts = 0

        async def send(transport: Transport) -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                _retag(batch)
            if declare:
                await self._declare(transport, declare)
            await transport.publish(batch)

        await self.connection.retrying(send)

    def publish_sync(self, outgoing: Outgoing, queue: Queue) -> bool:
        """Publish one message from sync code, with no event loop, where the transport can.

        Only to a ``queue`` already declared on this connection since it last connected:
        declaring, reconnecting and retrying belong to :meth:`publish_many`, which the
        caller uses whenever this returns False (nothing was stored).
        """
        if (
            self._declared_generation != self.connection.generation
            or queue.name not in self._declared
            or not self.connection.is_connected
        ):
            return False
        if self.connection.transport.publish_sync((outgoing,)):
            return True
        _retag((outgoing,))  # the attempt may have been stored before its reply was lost
        return False

    async def _declare(self, transport: Transport, queues: Sequence[Queue]) -> None:
        generation = self.connection.generation
        if generation != self._declared_generation:
            self._declared.clear()
            self._declared_generation = generation
        for queue in queues:
            if queue.name not in self._declared:
                await transport.declare_queue(queue)
                self._declared.add(queue.name)


def _retag(batch: Sequence[Outgoing]) -> None:
    """Let the transport draw new delivery tags for messages sent again: an attempt that
    broke may have stored some before its reply was lost, and a broker keys its unacked
    records by tag, so a copy must not share the first one's."""
    for out in batch:
        out.message.delivery_tag = None
