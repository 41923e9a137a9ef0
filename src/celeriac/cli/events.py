"""``celeriac events`` (live top, ``--dump``, ``--camera``) and ``celeriac snapshots``."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from .main import CLIContext, setup_logging

__all__ = ["events", "snapshots"]


@click.command()
@click.option("-d", "--dump", is_flag=True, help="Print one line per event instead of the top.")
@click.option("-c", "--camera", help="Take snapshots with this camera class (module.Class).")
@click.option(
    "-F",
    "--frequency",
    "--freq",
    "frequency",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds between camera snapshots.",
)
@click.option("-r", "--maxrate", help="Most camera snapshots per time unit (e.g. 100/s).")
@click.option("--db", "db_path", help="SQLite file of the SQLite camera (its path= option).")
@click.option("--routing-key", default="#", show_default=True, help="Which events to receive.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("-l", "--loglevel", default="WARNING", show_default=True, help="Logging level.")
@click.pass_obj
def events(
    obj: CLIContext,
    dump: bool,
    camera: str | None,
    frequency: float,
    maxrate: str | None,
    db_path: str | None,
    routing_key: str,
    limit: int | None,
    timeout: float | None,
    loglevel: str,
) -> None:
    """Watch the cluster's events: a live top, a dump, or a snapshot camera."""
    setup_logging(loglevel)
    app = obj.app
    if dump:
        asyncio.run(_dump(app, routing_key, limit, timeout))
    elif camera:
        asyncio.run(_camera(app, camera, frequency, maxrate, db_path, routing_key, timeout))
    else:
        _top(app, routing_key)


def _receiver(app: Any, handlers: dict[str, Any], routing_key: str) -> Any:
    from ..events.receiver import EventReceiver

    conf = app.conf
    connection = app.connection_for()
    connection.max_retries = None  # a monitor waits for its broker however long it takes
    return EventReceiver(
        connection,
        handlers,
        routing_key=routing_key,
        exchange=conf.event_exchange or "celeryev",
        queue_prefix=conf.event_queue_prefix or "celeryev",
        queue_ttl=conf.event_queue_ttl,
        queue_expires=conf.event_queue_expires,
        accept=[conf.event_serializer or "json"],
    )


async def _dump(app: Any, routing_key: str, limit: int | None, timeout: float | None) -> None:
    from ..events.dumper import Dumper

    dumper = Dumper(sys.stdout)
    receiver = _receiver(app, {"*": dumper.on_event}, routing_key)
    click.echo(f"-> celeriac events: dumping events from {receiver.connection.as_uri()}", err=True)
    try:
        await receiver.capture(limit=limit, timeout=timeout)
    finally:
        await receiver.connection.close()


async def _camera(
    app: Any,
    camera: str,
    frequency: float,
    maxrate: str | None,
    db_path: str | None,
    routing_key: str,
    timeout: float | None,
) -> None:
    from ..events.state import State
    from ..utils.imports import symbol_by_name

    cls = symbol_by_name(camera)
    state = State()
    options = {"path": db_path} if db_path else {}
    cam = cls(state, freq=frequency, maxrate=maxrate, **options)
    receiver = _receiver(app, {"*": state.event}, routing_key)
    click.echo(f"-> celeriac events: {cam!r} on {receiver.connection.as_uri()}", err=True)
    shutter = asyncio.ensure_future(cam.run())
    try:
        await receiver.capture(timeout=timeout)
    finally:
        shutter.cancel()
        try:
            await shutter
        except asyncio.CancelledError:
            pass
        await receiver.connection.close()


def _top(app: Any, routing_key: str) -> None:
    try:
        from ..events.top import EventTop
    except ImportError as exc:  # pragma: no cover - textual is a dependency
        raise click.UsageError(f"the live view needs textual ({exc}); try --dump") from exc
    from ..events.state import State

    state = State()
    receiver = _receiver(app, {"*": state.event}, routing_key)

    async def capture() -> None:
        try:
            await receiver.capture()
        finally:
            await receiver.connection.close()

    EventTop(state, capture).run()


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("table", type=click.Choice(["tasks", "workers", "snapshots"]), default="tasks")
@click.option("-s", "--state", "state_", help="Only tasks in this state (SUCCESS, FAILURE...).")
@click.option("-n", "--name", help="Only tasks of this name.")
@click.option("-w", "--worker", help="Only tasks of this worker.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def snapshots(
    path: str,
    table: str,
    state_: str | None,
    name: str | None,
    worker: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Query what the SQLite camera (--camera celeriac.events.snapshot.SQLiteCamera) wrote."""
    from ..events.snapshot import query

    try:
        rows = query(path, table, state=state_, name=name, worker=worker, limit=limit)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    columns = {
        "tasks": ["uuid", "name", "state", "worker", "args", "runtime", "retries"],
        "workers": ["hostname", "alive", "active", "processed", "last_heartbeat"],
        "snapshots": ["id", "taken_at", "event_count", "task_count", "workers_alive", "states"],
    }[table]
    out = Table(*columns)
    for row in rows:
        out.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console(width=200).print(out)
