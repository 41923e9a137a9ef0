"""The mailbox: broadcast a command to nodes, collect their replies (Celery's pidbox).

Remote control is two exchanges and a queue per party (spec ``celery-wire.md`` section 5):

* requests go to ``<namespace>.pidbox``, a **fanout** exchange; every node consumes its own
  queue ``<nodename>.<namespace>.pidbox`` bound to it (on Redis: ``PUBLISH
  /<db>.celery.pidbox``, received through ``PSUBSCRIBE``);
* a request that wants replies names a ``ticket`` and a ``reply_to`` (the
  ``reply.<namespace>.pidbox`` **direct** exchange and the caller's routing key); each node
  answers with one message ``{nodename: reply}`` whose header ``ticket`` is the request's;
* the caller collects replies on ``<oid>.reply.<namespace>.pidbox`` until it has ``limit``
  of them or none arrived for ``timeout`` seconds, then deletes that queue.

Nodes pick requests by ``destination`` (a list of nodenames), else by ``pattern`` with a
``matcher`` (``glob`` or ``pcre``), else all of them run it. Queues carry Celery's
expiry and message TTL, so a node or client that vanishes leaves nothing behind.

Every request and reply carries the sender's Lamport clock in its ``clock`` header; both
sides adjust to what they receive. The clock is passed in (any object with ``forward()``
and ``adjust(value)``), because clocks belong to a higher layer.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import logging
import re
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..exceptions import BrokerConnectionError, ConnectionClosedError, DecodeError
from ..serialization import dumps, loads
from .entities import Exchange, Queue
from .message import Message
from .transports.base import Outgoing, Transport

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Mailbox", "Node", "Clock", "Reply", "match_node", "MATCHERS", "NO_REPLY"]

logger = logging.getLogger("celeriac.messaging.mailbox")

#: Seconds a request may wait in a node's queue (Celery's ``control_queue_ttl``).
DEFAULT_QUEUE_TTL = 300.0
#: Seconds after which the broker deletes an unused mailbox queue (``control_queue_expires``).
DEFAULT_QUEUE_EXPIRES = 10.0
#: Longest single wait of a node for requests (s); :meth:`Node.stop` acts within this.
NODE_FETCH_SLICE = 1.0
#: Requests claimed per broker call by a node.
NODE_FETCH_LIMIT = 100


class Clock(Protocol):
    """What the mailbox needs of a Lamport clock."""

    def forward(self) -> int: ...

    def adjust(self, other: int) -> int: ...


def _glob(value: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern)


def _pcre(value: str, pattern: str) -> bool:
    return re.search(pattern, value) is not None


#: ``matcher`` name -> ``match(nodename, pattern)``, as kombu's matcher registry names them.
MATCHERS: dict[str, Callable[[str, str], bool]] = {"glob": _glob, "pcre": _pcre}


def match_node(
    hostname: str,
    destination: Collection[str] | None = None,
    pattern: str | None = None,
    matcher: str | None = None,
) -> bool:
    """Whether the node ``hostname`` runs a request with these selection fields.

    A non-empty ``destination`` decides alone; else ``pattern`` (with ``matcher``, ``glob``
    by default); else every node runs it. An unknown matcher selects nobody.
    """
    if destination:
        return hostname in destination
    if pattern:
        match = MATCHERS.get(matcher or "glob")
        if match is None:
            logger.warning("mailbox: unknown matcher %r in a request; ignored", matcher)
            return False
        try:
            return match(hostname, pattern)
        except re.error as exc:
            logger.warning("mailbox: bad pattern %r: %s", pattern, exc)
            return False
    return True


@dataclass(frozen=True, slots=True)
class Reply:
    """One node's answer as collected: its name, the reply, and the reply's clock."""

    hostname: str
    value: Any
    clock: int | None = None


Handler = Callable[[str, dict[str, Any], Message], Any]


#: Returned by a handler that must not answer (``shutdown``: the node is going away).
class _NoReply:
    def __repr__(self) -> str:
        return "NO_REPLY"


NO_REPLY: Any = _NoReply()


class Mailbox:
    """Both ends of remote control on one connection.

    Args:
        connection: The broker connection (connected on first use).
        namespace: Celery's ``control_exchange`` (``celery``): names the exchanges.
        serializer: Codec of request and reply bodies.
        accept: Content types accepted in requests and replies.
        clock: The node's Lamport clock (optional).
        queue_ttl: Seconds a message may wait in a mailbox queue.
        queue_expires: Seconds after which an unused mailbox queue is deleted.
    """

    def __init__(
        self,
        connection: Connection,
        namespace: str = "celery",
        *,
        serializer: str = "json",
        accept: Collection[str] = ("json",),
        clock: Clock | None = None,
        queue_ttl: float | None = DEFAULT_QUEUE_TTL,
        queue_expires: float | None = DEFAULT_QUEUE_EXPIRES,
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self.serializer = serializer
        self.accept = tuple(accept)
        self.clock = clock
        self.queue_ttl = queue_ttl
        self.queue_expires = queue_expires
        self.exchange = Exchange(f"{namespace}.pidbox", "fanout", durable=False)
        self.reply_exchange = Exchange(f"reply.{namespace}.pidbox", "direct", durable=False)

    def __repr__(self) -> str:
        return f"<Mailbox {self.exchange.name} on {self.connection.as_uri()}>"

    # -- entities --------------------------------------------------------------------------

    def node_queue(self, hostname: str) -> Queue:
        """The queue of node ``hostname``: bound to the fanout exchange with an empty key."""
        return Queue(
            f"{hostname}.{self.exchange.name}",
            self.exchange,
            "",
            durable=False,
            auto_delete=True,
            expires=self.queue_expires,
            message_ttl=self.queue_ttl,
        )

    def reply_queue(self, oid: str) -> Queue:
        """The caller's reply queue for routing key ``oid``."""
        return Queue(
            f"{oid}.{self.reply_exchange.name}",
            self.reply_exchange,
            oid,
            durable=False,
            auto_delete=True,
            expires=self.queue_expires,
            message_ttl=self.queue_ttl,
        )

    def Node(self, hostname: str, handler: Handler) -> Node:
        """The serving end for ``hostname``: see :class:`Node`."""
        return Node(self, hostname, handler)

    # -- encoding --------------------------------------------------------------------------

    def _clock_header(self) -> int:
        return self.clock.forward() if self.clock is not None else 0

    def _adjust(self, headers: Mapping[str, Any]) -> None:
        value = headers.get("clock")
        if self.clock is not None and isinstance(value, int) and not isinstance(value, bool):
            self.clock.adjust(value)

    def _message(self, body: Any, headers: dict[str, Any], delivery_mode: int) -> Message:
        content_type, encoding, data = dumps(body, self.serializer)
        return Message(
            data,
            headers=headers,
            properties={"delivery_mode": delivery_mode},
            content_type=content_type,
            content_encoding=encoding,
        )

    def decode(self, message: Message) -> Any:
        """The body of a request or reply.

        Raises:
            DecodeError: undecodable, or a content type not in ``accept``.
        """
        return loads(message.body, message.content_type, message.content_encoding, self.accept)

    # -- the calling end -------------------------------------------------------------------

    async def cast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Collection[str] | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> None:
        """Send a command that wants no reply."""
        await self._send(command, arguments, destination, pattern, matcher, None, None, 0.0)

    async def call(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Collection[str] | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: Callable[[Reply], Any] | None = None,
    ) -> list[Reply]:
        """Send a command and collect replies.

        Collecting stops after ``limit`` replies (``len(destination)`` when a destination
        is given and no limit), or when no reply arrived for ``timeout`` seconds.

        Args:
            callback: Called with every reply as it arrives (``celeriac inspect`` prints
                them as they come).

        Raises:
            BrokerConnectionError: the broker stayed unreachable.
        """
        if limit is None and destination:
            limit = len(destination)
        oid = uuid.uuid4().hex
        ticket = str(uuid.uuid4())
        queue = self.reply_queue(oid)
        await self.connection.connect()
        await self.connection.declare(self.reply_exchange, queue)
        try:
            reply_to = {"exchange": self.reply_exchange.name, "routing_key": oid}
            await self._send(
                command, arguments, destination, pattern, matcher, ticket, reply_to, timeout
            )
            return await self._collect(queue, ticket, timeout, limit, callback)
        finally:
            await self._forget(queue)

    async def _send(
        self,
        command: str,
        arguments: Mapping[str, Any] | None,
        destination: Collection[str] | None,
        pattern: str | None,
        matcher: str | None,
        ticket: str | None,
        reply_to: dict[str, str] | None,
        timeout: float,
    ) -> None:
        body: dict[str, Any] = {
            "method": command,
            "arguments": dict(arguments or {}),
            "destination": list(destination) if destination else None,
            "pattern": pattern,
            "matcher": matcher if pattern else None,
        }
        if ticket is not None:
            body["ticket"] = ticket
            body["reply_to"] = reply_to
        headers = {
            "clock": self._clock_header(),
            "expires": time.time() + timeout if timeout else 0,
        }
        # delivery_mode 2 on requests, as kombu sends them (spec section 5.2).
        out = Outgoing(self._message(body, headers, 2), self.exchange.name, "")
        await self.connection.connect()
        await self.connection.declare(self.exchange)

        async def publish(transport: Transport) -> None:
            await transport.publish([out])

        await self.connection.retrying(publish)

    async def _collect(
        self,
        queue: Queue,
        ticket: str,
        timeout: float,
        limit: int | None,
        callback: Callable[[Reply], Any] | None,
    ) -> list[Reply]:
        loop = asyncio.get_running_loop()
        replies: list[Reply] = []
        name = queue.name
        idle_until = loop.time() + timeout
        while limit is None or len(replies) < limit:
            remaining = idle_until - loop.time()
            if remaining <= 0:
                break
            want = 100 if limit is None else limit - len(replies)

            async def fetch(
                transport: Transport, want: int = want, wait: float = remaining
            ) -> list[Message]:
                return await transport.fetch([name], want, wait)

            messages = await self.connection.retrying(fetch)
            if not messages:
                continue
            await self.connection.retrying(lambda t, m=messages: t.ack(m))
            now = time.time()
            for message in messages:
                reply = self._reply_of(message, ticket, now)
                if reply is None:
                    continue
                replies.append(reply)
                if callback is not None:
                    result = callback(reply)
                    if inspect.isawaitable(result):
                        await result
            idle_until = loop.time() + timeout
        return replies

    def _reply_of(self, message: Message, ticket: str, now: float) -> Reply | None:
        headers = message.headers or {}
        if headers.get("ticket") != ticket:
            return None  # a late reply to an earlier call
        expires = headers.get("expires")
        if isinstance(expires, int | float) and expires and expires < now:
            return None
        try:
            body = self.decode(message)
        except DecodeError as exc:
            logger.warning("mailbox: skipped an undecodable reply: %s", exc)
            return None
        if not isinstance(body, dict) or len(body) != 1:
            logger.warning("mailbox: skipped a reply that is not {node: reply}: %r", body)
            return None
        self._adjust(headers)
        ((hostname, value),) = body.items()
        clock = headers.get("clock")
        return Reply(str(hostname), value, clock if isinstance(clock, int) else None)

    async def _forget(self, queue: Queue) -> None:
        async def delete(transport: Transport) -> None:
            await transport.delete_queue(queue.name)

        try:
            await self.connection.retrying(delete)
        except (BrokerConnectionError, ConnectionClosedError) as exc:
            logger.debug("mailbox: could not delete reply queue %s: %r", queue.name, exc)

    # -- replying --------------------------------------------------------------------------

    async def reply(
        self, hostname: str, value: Any, reply_to: Mapping[str, Any], ticket: str
    ) -> None:
        """Send ``{hostname: value}`` to a caller's ``reply_to``."""
        exchange = str(reply_to.get("exchange") or self.reply_exchange.name)
        routing_key = str(reply_to.get("routing_key") or "")
        headers = {"ticket": ticket, "clock": self._clock_header()}
        out = Outgoing(self._message({hostname: value}, headers, 1), exchange, routing_key)

        async def publish(transport: Transport) -> None:
            await transport.publish([out])

        await self.connection.retrying(publish)


class Node:
    """The serving end of a mailbox for one nodename.

    :meth:`run` consumes the node's queue and calls ``handler(method, arguments, message)``
    for every request meant for this node, one at a time, in arrival order. What the
    handler returns (awaited if awaitable) is the reply; an exception becomes
    ``{"error": repr(exc)}``, so a bad request never ends the loop. A handler raising
    :class:`SystemExit` or returning :data:`NO_REPLY` (the ``shutdown`` command) sends
    no reply, as Celery's does.

    Args:
        mailbox: The mailbox (exchanges, codec, clock).
        hostname: This node's name.
        handler: The command dispatcher.
    """

    def __init__(self, mailbox: Mailbox, hostname: str, handler: Handler) -> None:
        self.mailbox = mailbox
        self.hostname = hostname
        self.handler = handler
        self.queue = mailbox.node_queue(hostname)
        self._stopping = False
        #: Requests handled (for this node) since creation.
        self.handled = 0

    def __repr__(self) -> str:
        return f"<Node {self.hostname} {self.queue.name}>"

    async def declare(self) -> None:
        """Declare the exchanges and this node's queue (requests sent after this arrive)."""
        connection = self.mailbox.connection
        await connection.connect()
        await connection.declare(self.mailbox.exchange, self.mailbox.reply_exchange, self.queue)

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        """Serve requests until :meth:`stop` (or cancellation).

        Raises:
            BrokerConnectionError: the broker stayed unreachable past the connection's
                retries (the caller restarts the consumer).
        """
        self._stopping = False
        await self.declare()
        connection = self.mailbox.connection
        name = self.queue.name
        while not self._stopping:

            async def fetch(transport: Transport) -> list[Message]:
                return await transport.fetch([name], NODE_FETCH_LIMIT, NODE_FETCH_SLICE)

            messages = await connection.retrying(fetch)
            if not messages:
                continue
            await connection.retrying(lambda t, m=messages: t.ack(m))
            for message in messages:
                await self.dispatch(message)

    async def dispatch(self, message: Message) -> Any:
        """Handle one request message (selection, handler, reply); returns the reply."""
        mailbox = self.mailbox
        try:
            body = mailbox.decode(message)
        except DecodeError as exc:
            logger.warning("mailbox %s: skipped an undecodable request: %s", self.hostname, exc)
            return None
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            logger.warning("mailbox %s: skipped a malformed request: %r", self.hostname, body)
            return None
        mailbox._adjust(message.headers or {})
        if not match_node(
            self.hostname, body.get("destination"), body.get("pattern"), body.get("matcher")
        ):
            return None
        method: str = body["method"]
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, dict):
            arguments = {}
        ticket, reply_to = body.get("ticket"), body.get("reply_to")
        self.handled += 1
        try:
            reply = self.handler(method, arguments, message)
            if inspect.isawaitable(reply):
                reply = await reply
        except SystemExit:
            reply = NO_REPLY
        except Exception as exc:
            logger.warning("mailbox %s: command %r failed: %r", self.hostname, method, exc)
            logger.debug("command %r failed", method, exc_info=True)
            reply = {"error": repr(exc)}
        if reply is NO_REPLY:
            return None
        if ticket and isinstance(reply_to, dict):
            try:
                await mailbox.reply(self.hostname, reply, reply_to, str(ticket))
            except (BrokerConnectionError, ConnectionClosedError):
                raise
            except Exception as exc:  # unserialisable reply, unknown exchange, ...
                logger.error("mailbox %s: cannot reply to %r: %r", self.hostname, method, exc)
                await mailbox.reply(
                    self.hostname, {"error": f"cannot send reply: {exc!r}"}, reply_to, str(ticket)
                )
        return reply
