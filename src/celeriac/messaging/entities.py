"""The broker-neutral AMQP model: exchanges, queues and the bindings between them.

These are plain frozen values. Declaring them on a broker is the transport's job; routing a
published message to queues follows AMQP's rules, implemented once in :func:`route` for the
transports that emulate exchanges (memory, sqlite, redis).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

__all__ = [
    "Exchange",
    "Queue",
    "Binding",
    "ExchangeType",
    "DEFAULT_EXCHANGE",
    "topic_matches",
    "route",
]

ExchangeType = Literal["direct", "topic", "fanout", "headers"]


@dataclass(frozen=True, slots=True)
class Exchange:
    """A named router. ``Exchange("")`` is AMQP's default exchange: routing key = queue name."""

    name: str = ""
    type: ExchangeType = "direct"
    durable: bool = True
    auto_delete: bool = False
    arguments: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.type not in ("direct", "topic", "fanout", "headers"):
            raise ValueError(f"unknown exchange type {self.type!r}: use direct, topic or fanout")


#: AMQP's nameless direct exchange, which routes to the queue named by the routing key.
DEFAULT_EXCHANGE = Exchange("")


@dataclass(frozen=True, slots=True)
class Binding:
    """Routes messages from ``exchange`` with a matching ``routing_key`` to ``queue``."""

    exchange: str
    routing_key: str
    queue: str


@dataclass(frozen=True, slots=True)
class Queue:
    """A named queue, bound to ``exchange`` with ``routing_key`` (both default to its name).

    ``max_priority`` enables priorities (higher number = delivered first, AMQP semantics).
    ``expires`` (seconds) lets a broker remove an unused queue, used by event receivers.
    """

    name: str
    exchange: Exchange | None = None
    routing_key: str | None = None
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    max_priority: int | None = None
    expires: float | None = None
    message_ttl: float | None = None
    bindings: tuple[Binding, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a queue needs a name")

    @property
    def effective_exchange(self) -> Exchange:
        return self.exchange if self.exchange is not None else Exchange(self.name, "direct")

    @property
    def effective_routing_key(self) -> str:
        return self.routing_key if self.routing_key is not None else self.name

    def all_bindings(self) -> tuple[Binding, ...]:
        """Every binding this queue needs: its own exchange binding plus any extra ones."""
        ex = self.effective_exchange
        own = () if ex.name == "" else (Binding(ex.name, self.effective_routing_key, self.name),)
        return own + tuple(self.bindings)


@lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on ``.``, ``*`` is one word, ``#`` zero or more."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pat: tuple[str, ...], key: tuple[str, ...]) -> bool:
    if not pat:
        return not key
    head, rest = pat[0], pat[1:]
    if head == "#":
        return any(_match(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    if head == "*" or head == key[0]:
        return _match(rest, key[1:])
    return False


def route(
    exchange_type: str, routing_key: str, bindings: Iterable[tuple[str, str]]
) -> list[str]:
    """Queues that receive a message, given the exchange's ``(binding_key, queue)`` pairs.

    Each queue appears at most once even when several of its bindings match.
    """
    seen: dict[str, None] = {}
    if exchange_type == "fanout":
        for _key, queue in bindings:
            seen[queue] = None
    elif exchange_type == "topic":
        for key, queue in bindings:
            if topic_matches(key, routing_key):
                seen[queue] = None
    else:  # direct (headers exchanges route like direct here: not emulated)
        for key, queue in bindings:
            if key == routing_key:
                seen[queue] = None
    return list(seen)
