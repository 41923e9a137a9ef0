"""The mailbox on every transport: broadcast, selection, replies, errors, casts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from celeriac.events import LamportClock
from celeriac.messaging import NO_REPLY, Connection, Mailbox, Message, match_node


@contextlib.asynccontextmanager
async def serving(
    url: str, options: dict[str, Any], names: list[str], handler: Any, namespace: str
) -> AsyncIterator[list[Any]]:
    conns, tasks, nodes = [], [], []
    for name in names:
        conn = Connection(url, transport_options=options)
        mailbox = Mailbox(conn, namespace, clock=LamportClock())
        node = mailbox.Node(name, handler(name))
        await node.declare()
        conns.append(conn)
        nodes.append(node)
        tasks.append(asyncio.ensure_future(node.run()))
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for conn in conns:
            await conn.close()


def echo(name: str) -> Any:
    def handle(method: str, arguments: dict[str, Any], message: Message) -> Any:
        if method == "ping":
            return {"ok": "pong"}
        if method == "who":
            return {"name": name, **arguments}
        if method == "slow":
            return asyncio.sleep(0.05, result="late")
        if method == "bye":
            return NO_REPLY
        raise KeyError(method)

    return handle


def test_broadcast_selection_errors_and_clock(
    transport_url: str, base_options: dict[str, Any], unique: Any
) -> None:
    asyncio.run(_broadcast(transport_url, base_options, unique))


async def _broadcast(transport_url: str, base_options: dict[str, Any], unique: Any) -> None:
    ns = unique("ctl")
    async with serving(transport_url, base_options, ["a@h", "b@h", "c@h"], echo, ns):
        conn = Connection(transport_url, transport_options=base_options)
        clock = LamportClock()
        mailbox = Mailbox(conn, ns, clock=clock)
        try:
            # Given three nodes, when pinging everyone, then three pongs arrive
            replies = await mailbox.call("ping", timeout=1.0, limit=3)
            assert sorted(r.hostname for r in replies) == ["a@h", "b@h", "c@h"]
            assert all(r.value == {"ok": "pong"} for r in replies)
            assert clock.value > max(r.clock or 0 for r in replies)
            # destination picks exactly one, and stops waiting after it answered
            start = asyncio.get_running_loop().time()
            replies = await mailbox.call("who", {"x": 1}, destination=["b@h"], timeout=5.0)
            assert asyncio.get_running_loop().time() - start < 2.0
            assert [(r.hostname, r.value) for r in replies] == [("b@h", {"name": "b@h", "x": 1})]
            # glob and pcre patterns
            replies = await mailbox.call("ping", pattern="[ac]@*", timeout=0.5)
            assert sorted(r.hostname for r in replies) == ["a@h", "c@h"]
            replies = await mailbox.call("ping", pattern="^b@", matcher="pcre", timeout=0.5)
            assert [r.hostname for r in replies] == ["b@h"]
            # an unknown command is an error reply, and the node keeps serving
            replies = await mailbox.call("nosuch", destination=["a@h"], timeout=1.0)
            assert replies[0].value == {"error": "KeyError('nosuch')"}
            replies = await mailbox.call("slow", destination=["a@h"], timeout=1.0)
            assert replies[0].value == "late"
            # NO_REPLY and casts send nothing back
            assert await mailbox.call("bye", destination=["a@h"], timeout=0.3) == []
            await mailbox.cast("ping")
        finally:
            await conn.close()


def test_request_and_reply_have_celerys_wire_shape(
    transport_url: str, base_options: dict[str, Any], unique: Any
) -> None:
    asyncio.run(_wire_shape(transport_url, base_options, unique))


async def _wire_shape(transport_url: str, base_options: dict[str, Any], unique: Any) -> None:
    ns = unique("ctl")
    seen: list[Message] = []

    def spy(name: str) -> Any:
        def handle(method: str, arguments: dict[str, Any], message: Message) -> Any:
            seen.append(message)
            return {"ok": "pong"}

        return handle

    async with serving(transport_url, base_options, ["w1@h"], spy, ns):
        conn = Connection(transport_url, transport_options=base_options)
        try:
            replies = await Mailbox(conn, ns).call("ping", timeout=1.0, limit=1)
        finally:
            await conn.close()
    assert replies and replies[0].hostname == "w1@h"
    (request,) = seen
    body = json.loads(request.body)
    assert set(body) == {
        "method", "arguments", "destination", "pattern", "matcher", "ticket", "reply_to"
    }  # fmt: skip
    assert body["reply_to"]["exchange"] == f"reply.{ns}.pidbox"
    assert set(request.headers) == {"clock", "expires"}
    assert request.delivery_info["exchange"] == f"{ns}.pidbox"


def test_match_node() -> None:
    assert match_node("a@h")
    assert match_node("a@h", ["a@h", "b@h"]) and not match_node("c@h", ["a@h"])
    assert match_node("a@h", None, "a@*") and not match_node("b@h", None, "a@*")
    assert match_node("a@h", None, r"^a@", "pcre")
    assert not match_node("a@h", None, "a@*", "nosuch")
    # destination wins over pattern
    assert not match_node("a@h", ["b@h"], "a@*")


@pytest.mark.parametrize("bad", [b"not json", b"[1, 2]"])
def test_bad_requests_are_skipped(bad: bytes) -> None:
    asyncio.run(_bad_request(bad))


async def _bad_request(bad: bytes) -> None:
    conn = Connection("memory://mb-bad")
    mailbox = Mailbox(conn)
    node = mailbox.Node("x@h", echo("x@h"))
    assert await node.dispatch(Message(bad)) is None
    await conn.close()
