"""Running one function on several threads at once, for tests of thread safety."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_threads(fn: Callable[[], T], count: int, timeout: float = 30.0) -> list[T]:
    """Run ``fn`` on ``count`` threads started together; return what each returned."""
    results: list[T] = []
    lock = threading.Lock()

    def run() -> None:
        value = fn()
        with lock:
            results.append(value)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert len(results) == count, f"{count - len(results)} of {count} threads failed"
    return results
