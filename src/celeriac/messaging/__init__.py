"""The broker-neutral messaging layer: the AMQP model, connections, producers, consumers.

Transports (``memory://``, ``sqlite://``, ``redis://``, ``amqp://``) live in
:mod:`celeriac.messaging.transports` and are chosen by URL scheme.
"""

from .connection import Connection
from .consumer import Consumer
from .entities import DEFAULT_EXCHANGE, Binding, Exchange, Queue, route, topic_matches
from .mailbox import NO_REPLY, Mailbox, Node, Reply, match_node
from .message import Acker, Message, MessageStateError
from .producer import Producer
from .transports import get_transport_cls
from .transports.base import QUARANTINE_QUEUE, ExchangeNotFound, Outgoing, Transport

__all__ = [
    "Acker",
    "Binding",
    "Connection",
    "Consumer",
    "DEFAULT_EXCHANGE",
    "Exchange",
    "ExchangeNotFound",
    "Mailbox",
    "Message",
    "MessageStateError",
    "NO_REPLY",
    "Node",
    "Outgoing",
    "Producer",
    "QUARANTINE_QUEUE",
    "Queue",
    "Reply",
    "Transport",
    "get_transport_cls",
    "match_node",
    "route",
    "topic_matches",
]
