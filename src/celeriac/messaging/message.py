"""One message, as published and as delivered.

A delivered message carries what the broker said about this delivery (``delivery_info``,
``redelivered``, ``delivery_count``) and an opaque ``receipt`` that the transport uses to
fence acks: an ack with a receipt from a lease that has since expired and been re-claimed
must not remove the newer holder's claim.

``ack()``/``reject()`` do not talk to the broker themselves: they hand the message to its
*acker* (normally the :class:`~celeriac.messaging.consumer.Consumer`), which coalesces every
ack of one loop iteration into one broker call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Message", "Acker", "MessageStateError", "RECEIVED", "ACKED", "REJECTED", "REQUEUED"]

RECEIVED = "RECEIVED"
ACKED = "ACKED"
REJECTED = "REJECTED"
REQUEUED = "REQUEUED"


class MessageStateError(RuntimeError):
    """A message was acknowledged twice (ack after reject, reject after ack, ...)."""


class Acker(Protocol):
    """Receives a delivered message's settlement; implementations batch them."""

    def settle_ack(self, message: Message) -> None: ...

    def settle_reject(self, message: Message, requeue: bool) -> None: ...


class Message:
    """A message: body bytes, application headers and AMQP-like properties.

    ``properties`` holds ``correlation_id``, ``reply_to``, ``delivery_mode``, ``priority``,
    ``expiration`` and any other property a producer set. ``content_type`` and
    ``content_encoding`` say how ``body`` is encoded; nothing here decodes it.
    """

    __slots__ = (
        "acker",
        "body",
        "content_encoding",
        "content_type",
        "delivery_count",
        "delivery_info",
        "delivery_tag",
        "headers",
        "properties",
        "receipt",
        "redelivered",
        "state",
    )

    def __init__(
        self,
        body: bytes,
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        content_type: str = "application/json",
        content_encoding: str = "utf-8",
        *,
        delivery_info: dict[str, Any] | None = None,
        delivery_tag: str | None = None,
        redelivered: bool = False,
        delivery_count: int = 0,
        receipt: Any = None,
        acker: Acker | None = None,
    ) -> None:
        self.body = body
        self.headers = headers if headers is not None else {}
        self.properties = properties if properties is not None else {}
        self.content_type = content_type
        self.content_encoding = content_encoding
        #: ``{"exchange": ..., "routing_key": ..., "queue": ...}`` for a delivered message.
        self.delivery_info = delivery_info if delivery_info is not None else {}
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        #: How many times the broker has handed this message out, this delivery included.
        self.delivery_count = delivery_count
        #: Transport-private claim token used to fence acks (see module docstring).
        self.receipt = receipt
        self.state = RECEIVED
        self.acker = acker

    # -- settlement --------------------------------------------------------------------

    @property
    def acknowledged(self) -> bool:
        return self.state != RECEIVED

    def ack(self) -> None:
        """Settle: the message is done and leaves the broker."""
        self._settle(ACKED)
        if self.acker is not None:
            self.acker.settle_ack(self)

    def reject(self, requeue: bool = False) -> None:
        """Settle negatively: back to its queue when ``requeue``, else removed."""
        self._settle(REQUEUED if requeue else REJECTED)
        if self.acker is not None:
            self.acker.settle_reject(self, requeue)

    def requeue(self) -> None:
        self.reject(requeue=True)

    def settlement(self) -> Message:
        """This message as a settlement waiting for its broker call keeps it: where it was
        delivered and its receipt, without its parsed headers, properties or body.

        Why: settlements wait in a batch for one broker call at a time. Under load a
        worker had nearly as many settled messages waiting as unsettled ones, each
        keeping its whole content alive, so its memory rose with the broker's latency and
        each new high kept the allocator's memory for good. (A receipt may still hold the
        raw envelope, e.g. a Redis claim's, for requeues: one bytes object, not dozens of
        small ones.)
        """
        copy = Message(
            b"",
            None,
            None,
            self.content_type,
            self.content_encoding,
            delivery_info=self.delivery_info,
            delivery_tag=self.delivery_tag,
            redelivered=self.redelivered,
            delivery_count=self.delivery_count,
            receipt=self.receipt,
        )
        copy.state = self.state
        return copy

    def _settle(self, new_state: str) -> None:
        if self.state != RECEIVED:
            raise MessageStateError(
                f"message {self.delivery_tag} already {self.state.lower()}; "
                f"cannot mark it {new_state.lower()}"
            )
        self.state = new_state

    # -- convenience -------------------------------------------------------------------

    @property
    def priority(self) -> int:
        return int(self.properties.get("priority") or 0)

    @property
    def queue(self) -> str | None:
        return self.delivery_info.get("queue")

    def copy_for_publish(self, headers: Mapping[str, Any] | None = None) -> Message:
        """A fresh outgoing copy (no delivery state), e.g. to dead-letter or republish."""
        h = dict(self.headers)
        if headers:
            h.update(headers)
        props = dict(self.properties)
        props.pop("delivery_tag", None)  # a copy is a new message with a tag of its own
        return Message(self.body, h, props, self.content_type, self.content_encoding)

    def __repr__(self) -> str:
        task = self.headers.get("task")
        ident = self.headers.get("id") or self.delivery_tag
        what = f" {task}[{ident}]" if task else f" {ident}"
        return f"<Message{what} {self.state} {len(self.body)}B>"
