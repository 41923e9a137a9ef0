"""``celeriac inspect``, ``celeriac control``, ``celeriac status``, ``celeriac revoke``.

Celery's spellings: ``-d/--destination`` (comma separated nodenames), ``-t/--timeout``
(seconds without a reply before collecting stops, 1.0), ``-j/--json``. Positional
arguments map onto each command's keyword arguments as its :class:`Command` says
(``celeriac control rate_limit proj.add 10/m``). Humans get one Rich table per command;
``--json`` prints ``{node: reply}`` for scripts. The exit status is 1 when no worker
answered, as with Celery.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..worker.control import COMMANDS, Command
from .main import CLIContext

__all__ = ["inspect", "control", "status", "revoke"]


def _destination(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [d.strip() for d in value.split(",") if d.strip()]


def _coerce(kind: type, value: str) -> Any:
    if kind is bool:
        return value.lower() in ("1", "true", "yes", "on")
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a {kind.__name__}") from None
    return value


def arguments_for(cmd: Command, args: tuple[str, ...]) -> dict[str, Any]:
    """Map CLI positional arguments onto the command's keyword arguments."""
    out: dict[str, Any] = {}
    rest = list(args)
    for name, kind in cmd.args:
        if not rest:
            break
        if cmd.variadic == name:
            break
        out[name] = _coerce(kind, rest.pop(0))
    if cmd.variadic is not None:
        if rest:
            out[cmd.variadic] = rest if cmd.variadic != "task_id" or len(rest) > 1 else rest[0]
    elif rest:
        raise click.UsageError(f"{cmd.name} takes at most {len(cmd.args)} argument(s)")
    return out


def _run(
    obj: CLIContext,
    name: str,
    args: tuple[str, ...],
    destination: str | None,
    timeout: float,
    as_json: bool,
    kind: str,
    extra: dict[str, Any] | None = None,
) -> None:
    cmd = COMMANDS.get(name)
    if cmd is None or cmd.kind != kind:
        known = sorted({c.name for c in COMMANDS.values() if c.kind == kind and not c.hidden})
        raise click.UsageError(
            f"unknown {kind} command {name!r}; choose one of: {', '.join(known)}"
        )
    arguments = arguments_for(cmd, args)
    arguments.update(extra or {})
    app = obj.app
    dest = _destination(destination)
    replies = app.control.broadcast(
        cmd.name, arguments, destination=dest, reply=True, timeout=timeout
    )
    app.close()
    flat: dict[str, Any] = {}
    for reply in replies or []:
        flat.update(reply)
    if as_json:
        click.echo(json.dumps(flat, indent=None, default=repr))
    else:
        _render(obj, cmd.name, flat)
    if not flat:
        if not as_json:
            click.echo("Error: No nodes replied within time constraint", err=True)
        sys.exit(1)


def _render(obj: CLIContext, name: str, replies: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(no_color=obj.no_color, highlight=False, soft_wrap=True)
    if not replies:
        return
    if name in ("active", "reserved", "scheduled"):
        table = Table("worker", "id", "name", "args", "started", "pid", title=name)
        for node, items in sorted(replies.items()):
            if not isinstance(items, list) or not items:
                table.add_row(node, "-", "", "", "", "")
                continue
            for item in items:
                info = item.get("request", item) if isinstance(item, dict) else {}
                when = item.get("eta") if name == "scheduled" else info.get("time_start")
                table.add_row(
                    node,
                    str(info.get("id")),
                    str(info.get("name")),
                    str(info.get("args")),
                    str(when or ""),
                    str(info.get("worker_pid") or ""),
                )
        console.print(table)
    elif name == "stats":
        table = Table("worker", "pid", "pool", "concurrency", "prefetch", "uptime", "tasks")
        for node, st in sorted(replies.items()):
            if not isinstance(st, dict) or "pool" not in st:
                table.add_row(node, str(st), "", "", "", "", "")
                continue
            pool = st.get("pool") or {}
            table.add_row(
                node,
                str(st.get("pid")),
                str(pool.get("implementation", "")).rsplit(":", 1)[-1],
                str(pool.get("max-concurrency")),
                str(st.get("prefetch_count")),
                f"{st.get('uptime')}s",
                str(sum((st.get("total") or {}).values())),
            )
        console.print(table)
    elif name == "active_queues":
        table = Table("worker", "queue", "exchange", "routing key")
        for node, queues in sorted(replies.items()):
            for q in queues if isinstance(queues, list) else []:
                ex = q.get("exchange") or {}
                table.add_row(
                    node, q.get("name"), f"{ex.get('name')}({ex.get('type')})", q.get("routing_key")
                )
        console.print(table)
    else:
        table = Table("worker", "reply", title=name)
        for node, value in sorted(replies.items()):
            table.add_row(node, _text(value))
        console.print(table)
    n = len(replies)
    console.print(f"{n} node{'s' if n != 1 else ''} online.")


def _text(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key in ("ok", "error"):
            return f"{'OK' if key == 'ok' else 'ERROR'}: {inner}"
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) or "- empty -"
    if isinstance(value, dict):
        return json.dumps(value, indent=2, default=repr)
    return str(value)


def _help(kind: str) -> str:
    lines = []
    for name, cmd in sorted(COMMANDS.items()):
        if cmd.kind == kind and not cmd.hidden and name == cmd.name:
            sig = cmd.signature or " ".join(f"[{a}]" for a, _ in cmd.args)
            lines.append(f"  {name} {sig}".rstrip() + f"  -- {cmd.help}")
    return "\n\n\b\n" + "\n".join(lines)


_common = [
    click.option("-d", "--destination", help="Comma separated nodenames (default: all)."),
    click.option(
        "-t", "--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait."
    ),
    click.option("-j", "--json", "as_json", is_flag=True, help="Print the replies as JSON."),
]


def _with_common(f: Any) -> Any:
    for option in reversed(_common):
        f = option(f)
    return f


@click.command(
    help="Inspect the workers (no side effects). Commands:" + _help("inspect"),
    context_settings={"ignore_unknown_options": False},
)
@click.argument("command")
@click.argument("args", nargs=-1)
@_with_common
@click.pass_obj
def inspect(
    obj: CLIContext,
    command: str,
    args: tuple[str, ...],
    destination: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    _run(obj, command, args, destination, timeout, as_json, "inspect")


@click.command(help="Change the workers' behaviour. Commands:" + _help("control"))
@click.argument("command")
@click.argument("args", nargs=-1)
@_with_common
@click.option("--terminate", is_flag=True, help="revoke: also stop running executions.")
@click.option("--signal", "signal_", help="revoke/terminate: signal name (default SIGTERM).")
@click.pass_obj
def control(
    obj: CLIContext,
    command: str,
    args: tuple[str, ...],
    destination: str | None,
    timeout: float,
    as_json: bool,
    terminate: bool,
    signal_: str | None,
) -> None:
    extra: dict[str, Any] = {}
    if terminate:
        extra["terminate"] = True
    if signal_:
        extra["signal"] = signal_
    _run(obj, command, args, destination, timeout, as_json, "control", extra)


@click.command()
@_with_common
@click.pass_obj
def status(obj: CLIContext, destination: str | None, timeout: float, as_json: bool) -> None:
    """List the live workers (they answer ping)."""
    app = obj.app
    replies = app.control.ping(destination=_destination(destination), timeout=timeout)
    app.close()
    nodes = sorted(node for reply in replies for node in reply)
    if as_json:
        click.echo(json.dumps({n: {"ok": "pong"} for n in nodes}))
    else:
        for node in nodes:
            click.echo(f"->  {node}: OK")
        click.echo(f"\n{len(nodes)} node{'s' if len(nodes) != 1 else ''} online.")
    if not nodes:
        sys.exit(1)


@click.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop executions already running.")
@click.option("--signal", "signal_", default="SIGTERM", show_default=True, help="Signal name.")
@_with_common
@click.pass_obj
def revoke(
    obj: CLIContext,
    task_ids: tuple[str, ...],
    terminate: bool,
    signal_: str,
    destination: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Revoke tasks by id: workers skip them (and with --terminate stop them)."""
    app = obj.app
    replies = app.control.revoke(
        list(task_ids),
        destination=_destination(destination),
        terminate=terminate,
        signal=signal_,
        reply=True,
        timeout=timeout,
    )
    app.close()
    flat: dict[str, Any] = {}
    for reply in replies or []:
        flat.update(reply)
    if as_json:
        click.echo(json.dumps(flat))
    else:
        for node, value in sorted(flat.items()):
            click.echo(f"->  {node}: {_text(value)}")
        if not flat:
            click.echo(
                "No worker answered; the revoke is kept in the revocation log for workers "
                "that start later.",
                err=True,
            )
