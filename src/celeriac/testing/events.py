"""Collect a broker's events in a test: ``with capture_events(app) as events: ...``.

The receiver runs on a thread with its own event loop and connection, so it works beside a
worker started with :func:`~celeriac.testing.start_worker` and beside sync client code.
Its queue is declared before the context is entered, so no event published inside the
block is missed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..events.payloads import Event
from ..events.receiver import EventReceiver
from ..messaging.connection import Connection

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["EventCollector", "capture_events"]


class EventCollector:
    """Events received so far (a thread-safe list) and ways to wait for more."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()

    def _add(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    @property
    def events(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def of_type(self, *types: str) -> list[Event]:
        return [e for e in self.events if e["type"] in types]

    def for_task(self, uuid: str) -> list[Event]:
        """One task's events, in clock order."""
        found = [e for e in self.events if e.get("uuid") == uuid]
        return sorted(found, key=lambda e: (e.get("clock") or 0, e.get("timestamp") or 0))

    def wait_for(self, predicate: Callable[[list[Event]], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate(events)`` is truthy; returns its value.

        Raises:
            AssertionError: it was not within ``timeout`` seconds (the message lists the
                event types received).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self._events))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    types = [e.get("type") for e in self._events]
                    raise AssertionError(f"events not seen within {timeout} s; got {types}")
                self._cond.wait(min(left, 0.1))


@contextmanager
def capture_events(
    app: Celeriac | None = None,
    *,
    url: str | None = None,
    transport_options: Mapping[str, Any] | None = None,
    routing_key: str = "#",
    ready_timeout: float = 10.0,
) -> Iterator[EventCollector]:
    """Receive events on a thread for the duration of the block.

    Args:
        app: Take the broker URL and transport options from this app.
        url: The broker URL (instead of ``app``'s).
        transport_options: Transport options (instead of ``app``'s).
        routing_key: Binding key on the events exchange.
        ready_timeout: Seconds to wait for the receiver's queue to be declared.
    """
    if app is not None:
        url = url or app.conf.broker_url
        if transport_options is None:
            transport_options = app.conf.broker_transport_options or {}
    if url is None:
        raise ValueError("capture_events() needs an app or a url")
    collector = EventCollector()
    ready = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    async def run() -> None:
        connection = Connection(str(url), transport_options=transport_options or {})
        receiver = EventReceiver(connection, {"*": collector._add}, routing_key=routing_key)
        try:
            await receiver.declare()
            ready.set()
            while not stop.is_set():
                await receiver.capture(timeout=0.1)
        finally:
            await connection.close()

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="celeriac-event-capture", daemon=True)
    thread.start()
    if not ready.wait(ready_timeout) or errors:
        stop.set()
        thread.join(5)
        if errors:
            raise errors[0]
        raise TimeoutError(f"event receiver not ready within {ready_timeout} s")
    try:
        yield collector
    finally:
        stop.set()
        thread.join(10)
        if errors:
            raise errors[0]
