"""``celeriac call``, ``celeriac result`` and ``celeriac purge``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from ..app import Celeriac
from ..utils import portal
from .main import CLIContext

__all__ = ["call", "result", "purge", "purge_queues"]


def _json_arg(value: str | None, what: str, kind: type) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} must be JSON: {exc}") from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(
            f"{what} must be a JSON {kind.__name__}, not {type(parsed).__name__}"
        )
    return parsed


@click.command()
@click.argument("name")
@click.option(
    "-a", "--args", "args_json", help="Positional arguments as a JSON list, e.g. '[2, 3]'."
)
@click.option("-k", "--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--countdown", type=float, help="Run no earlier than this many seconds from now.")
@click.option("--eta", help="Run no earlier than this ISO-8601 time.")
@click.option("--expires", type=float, help="Discard if not started within this many seconds.")
@click.option("-Q", "--queue", help="Queue to send to.")
@click.option("--priority", type=int, help="Message priority.")
@click.pass_obj
def call(
    obj: CLIContext,
    name: str,
    args_json: str | None,
    kwargs_json: str | None,
    countdown: float | None,
    eta: str | None,
    expires: float | None,
    queue: str | None,
    priority: int | None,
) -> None:
    """Send task NAME and print its id."""
    args = _json_arg(args_json, "--args", list)
    kwargs = _json_arg(kwargs_json, "--kwargs", dict)
    options: dict[str, Any] = {}
    if countdown is not None:
        options["countdown"] = countdown
    if eta is not None:
        from ..protocol import parse_iso8601

        options["eta"] = parse_iso8601(eta)
    if expires is not None:
        options["expires"] = expires
    if queue:
        options["queue"] = queue
    if priority is not None:
        options["priority"] = priority
    app = obj.app
    res = app.send_task(name, args, kwargs, **options)
    click.echo(res.id)
    app.close()


@click.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task is ready.")
@click.option("--timeout", type=float, help="Give up waiting after this many seconds.")
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="Show the traceback of a failure."
)
@click.pass_obj
def result(
    obj: CLIContext, task_id: str, wait: bool, timeout: float | None, show_traceback: bool
) -> None:
    """Print the state and result of TASK_ID."""
    app = obj.app
    res = app.AsyncResult(task_id)
    value = res.get(timeout=timeout, propagate=False) if wait else res.result
    state = res.state
    click.echo(f"{state}: {value!r}" if state != "SUCCESS" else repr(value))
    if show_traceback and res.traceback:
        click.echo(res.traceback)
    app.close()
    if state == "FAILURE":
        raise SystemExit(1)


@click.command()
@click.option("-Q", "--queues", help="Comma separated queues (default: the app's task queues).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(obj: CLIContext, queues: str | None, force: bool) -> None:
    """Delete every waiting message of the app's task queues."""
    app = obj.app
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    shown = ", ".join(names or _default_queue_names(app))
    if not force:
        click.confirm(f"Delete all waiting messages in {shown}? This cannot be undone", abort=True)
    count = purge_queues(app, names)
    click.echo(f"Purged {count} message(s) from {shown}.")


def _default_queue_names(app: Celeriac) -> list[str]:
    from ..routing import queues_from_conf

    return list(queues_from_conf(app)) or [app.conf.task_default_queue]


def purge_queues(app: Celeriac, names: Sequence[str] | None = None) -> int:
    names = list(names or _default_queue_names(app))

    async def _purge() -> int:
        conn = await app.get_connection()
        total = 0
        for name in names:
            await conn.declare(app.router.queue(name))
            total += await conn.retrying(lambda t, n=name: t.purge(n))
        return total

    return portal.run(_purge())
