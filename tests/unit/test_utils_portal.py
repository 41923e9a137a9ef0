"""Where sync calls run: the main thread's own loop, or the shared portal thread."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from tests.threads import on_threads

from celeriac.utils import portal


def _run_script(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_main_thread_calls_need_no_background_thread() -> None:
    # Given a script that sends a task and reads its result from its main thread
    out = _run_script("""
        import threading
        from celeriac import Celeriac
        app = Celeriac("p", broker="memory://", backend="memory://")
        @app.task(name="p.add")
        def add(x, y):
            return x + y
        app.conf.task_always_eager = False
        res = add.delay(2, 3)
        print(res.state, threading.active_count())
    """)
    # Then the call ran on the main thread: no portal thread was started for it
    assert out == "PENDING 1"


def test_other_threads_share_the_portal() -> None:
    async def where() -> str:
        return threading.current_thread().name

    seen = on_threads(lambda: portal.run(where()), 3)
    assert seen == ["celeriac-portal"] * 3
    assert portal.run(where()) == threading.main_thread().name


def test_a_sync_call_inside_a_running_loop_goes_to_the_portal() -> None:
    async def where() -> str:
        return threading.current_thread().name

    async def main() -> str:
        return portal.run(where())  # blocks this loop, but cannot deadlock it

    assert asyncio.run(main()) == "celeriac-portal"


def test_ctrl_c_cancels_the_call_and_the_next_call_works() -> None:
    events: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        portal.run(slow())
    # the interrupted coroutine was cancelled (its cleanup ran), not left suspended
    assert events == ["cancelled"]

    async def answer() -> int:
        return 42

    assert portal.run(answer()) == 42


def test_timeout_cancels_the_call() -> None:
    with pytest.raises(TimeoutError):
        portal.run(asyncio.sleep(10), timeout=0.05)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_loops_of_its_own() -> None:
    out = _run_script("""
        import asyncio, os
        from celeriac.utils import portal
        async def pid():
            await asyncio.sleep(0)
            return os.getpid()
        parent_loop = portal.caller_loop()
        portal.run(pid())
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            ok = portal.run(pid()) == os.getpid() and portal.caller_loop() is not parent_loop
            os.write(w, b"ok" if ok else b"bad")
            os._exit(0)
        os.waitpid(child, 0)
        print(os.read(r, 10).decode(), portal.run(pid()) == os.getpid())
    """)
    assert out == "ok True"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_dropping_its_inherited_loop_leaves_the_parents_loop_working() -> None:
    # Given a parent whose main-thread loop ran a call, and a forked child that lets
    # the loop it inherited be collected (closing it) before it exits
    out = _run_script("""
        import asyncio, ctypes, gc, os, sys
        from celeriac.utils import portal
        async def resolve():
            # getaddrinfo runs on another thread: the loop must wake for its answer
            return bool(await asyncio.get_running_loop().getaddrinfo("localhost", 80))
        portal.run(resolve())
        child = os.fork()
        if child == 0:
            gc.collect()
            sys.exit(0)
        os.waitpid(child, 0)
        # Then the parent's next call still completes
        print(portal.run(resolve(), timeout=10))
        # And a child forked without Python's fork hooks (as uWSGI forks) gets a loop
        # of its own instead of the parent's
        pid = ctypes.CDLL(None).fork()
        if pid == 0:
            ok = portal.run(resolve(), timeout=10)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), portal.run(resolve(), timeout=10))
    """)
    assert out == "True\n0 True"
