"""What only the sqlite transport promises: many processes, one file, nothing lost."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celeriac.exceptions import ConfigurationError
from celeriac.messaging import Message, Queue
from celeriac.messaging.transports.base import Outgoing
from celeriac.messaging.transports.sqlite import SQLiteTransport, sqlite_path

T = TypeVar("T")

PRODUCERS, CONSUMERS, PER_PRODUCER = 2, 2, 200


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _produce(url: str, index: int) -> None:
    async def main() -> None:
        transport = SQLiteTransport(url)
        await transport.connect()
        sent = 0
        while sent < PER_PRODUCER:
            size = min(1 + sent % 7, PER_PRODUCER - sent)
            batch = [
                Outgoing(Message(b"%d-%d" % (index, sent + i)), "", "work") for i in range(size)
            ]
            await transport.publish(batch)
            sent += size
        await transport.close()

    asyncio.run(main())


def _consume(url: str, done: Any, results: Any) -> None:
    async def main() -> list[bytes]:
        transport = SQLiteTransport(url, {"visibility_timeout": 60})
        await transport.connect()
        seen: list[bytes] = []
        while True:
            got = await transport.fetch(["work"], 13, 0.3)
            if got:
                seen.extend(m.body for m in got)
                await transport.ack(got)
            elif done.is_set():
                break
        await transport.close()
        return seen

    try:
        results.put(("ok", asyncio.run(main())))
    except BaseException as exc:  # report every failure, "database is locked" included
        results.put(("error", repr(exc)))


def test_many_processes_share_one_file_and_consume_each_message_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"

    async def declare() -> None:
        transport = SQLiteTransport(url)
        await transport.connect()
        await transport.declare_queue(Queue("work"))
        await transport.close()

    run(declare())
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    results = ctx.Queue()
    consumers = [ctx.Process(target=_consume, args=(url, done, results)) for _ in range(CONSUMERS)]
    producers = [ctx.Process(target=_produce, args=(url, i)) for i in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join(30)
        assert process.exitcode == 0
    done.set()
    outcomes = [results.get(timeout=30) for _ in consumers]
    for process in consumers:
        process.join(10)
    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert errors == []
    consumed = [body for _, bodies in outcomes for body in bodies]
    expected = [b"%d-%d" % (p, i) for p in range(PRODUCERS) for i in range(PER_PRODUCER)]
    assert len(consumed) == len(expected)
    assert sorted(consumed) == sorted(expected)


def test_messages_survive_closing_and_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"

    async def main() -> None:
        first = SQLiteTransport(url, {"visibility_timeout": 0.3})
        await first.connect()
        await first.publish([Outgoing(Message(b"a"), "", "q"), Outgoing(Message(b"b"), "", "q")])
        await first.fetch(["q"], 1, 1.0)  # claimed, then the holder goes away
        await first.close()
        second = SQLiteTransport(url, {"visibility_timeout": 0.3})
        await second.connect()
        got = await second.fetch(["q"], 10, 0.05)
        assert [m.body for m in got] == [b"b"]
        (back,) = await second.fetch(["q"], 10, 2.0)
        assert back.body == b"a" and back.redelivered and back.delivery_count == 2
        await second.close()

    run(main())


def test_a_held_write_lock_delays_but_never_fails_a_publish(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"

    async def main() -> None:
        transport = SQLiteTransport(url)
        await transport.connect()
        locked, release = threading.Event(), threading.Event()

        def hold_lock() -> None:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(5)
            other.execute("COMMIT")
            other.close()

        holder = threading.Thread(target=hold_lock)
        holder.start()
        locked.wait(5)
        # When another process holds the write lock during a publish
        publishing = asyncio.ensure_future(transport.publish([Outgoing(Message(b"x"), "", "q")]))
        await asyncio.sleep(0.3)
        assert not publishing.done()
        release.set()
        # Then the publish waits for it and succeeds
        await publishing
        holder.join()
        assert await transport.queue_length("q") == 1
        await transport.close()

    run(main())


def test_a_cancelled_fetch_gives_its_claim_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cancel.db'}"

    async def main() -> None:
        transport = SQLiteTransport(url, {"visibility_timeout": 60})
        await transport.connect()
        await transport.publish([Outgoing(Message(b"x"), "", "q")])
        claimed = threading.Event()
        original = transport._claim_tx

        def slow_claim(*args: Any) -> Any:
            result = original(*args)
            claimed.set()
            time.sleep(0.2)  # the caller is cancelled while the claim is on its way back
            return result

        transport._claim_tx = slow_claim  # type: ignore[method-assign]
        fetching = asyncio.ensure_future(transport.fetch(["q"], 1, 5.0))
        await asyncio.get_running_loop().run_in_executor(None, claimed.wait, 5)
        fetching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetching
        transport._claim_tx = original  # type: ignore[method-assign]
        # The claim was returned at once, not left to a 60 s lease
        (again,) = await transport.fetch(["q"], 1, 2.0)
        assert again.body == b"x" and again.delivery_count == 2
        await transport.close()

    run(main())


def _publish_from_forked_child(transport: SQLiteTransport) -> None:
    async def main() -> None:
        assert not transport.is_connected  # the parent's database thread is not ours
        await transport.connect()
        await transport.publish([Outgoing(Message(b"from child"), "", "q")])
        await transport.close()

    asyncio.run(main())


def test_a_forked_child_reconnects_instead_of_using_the_parents_thread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}"

    async def main() -> None:
        transport = SQLiteTransport(url)
        await transport.connect()
        child = multiprocessing.get_context("fork").Process(
            target=_publish_from_forked_child, args=(transport,)
        )
        child.start()
        await asyncio.get_running_loop().run_in_executor(None, child.join, 20)
        assert child.exitcode == 0
        # The parent's connection still works, and sees the child's message
        (got,) = await transport.fetch(["q"], 1, 2.0)
        assert got.body == b"from child"
        await transport.close()

    run(main())


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///celeriac.db", "celeriac.db"),
        ("sqlite:///data/broker.db", "data/broker.db"),
        ("sqlite:////var/lib/celeriac/broker.db", "/var/lib/celeriac/broker.db"),
    ],
)
def test_sqlalchemy_style_paths(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite://", "names no database file"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://host/x.db", "host part"),
        ("sqlite:///x.db?mode=ro", "takes no query"),
    ],
)
def test_unusable_sqlite_urls_are_configuration_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        SQLiteTransport(url)


def test_unknown_synchronous_mode_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="sqlite_synchronous"):
        SQLiteTransport("sqlite:///x.db", {"sqlite_synchronous": "sometimes"})
