"""``celeriac worker``: start a worker, with Celery's flag spellings."""

from __future__ import annotations

import os
import platform
import sys
from typing import TYPE_CHECKING

import click

from .main import CLIContext, setup_logging

if TYPE_CHECKING:
    from ..worker.worker import WorkController

__all__ = ["worker", "banner"]


def _csv(ctx: click.Context, param: click.Parameter, value: tuple[str, ...] | None) -> list[str]:
    items: list[str] = []
    for chunk in value or ():
        items.extend(part.strip() for part in chunk.split(",") if part.strip())
    return items


@click.command()
@click.option("-n", "--hostname", help="Node name (name@host; %h %n %d expand).")
@click.option(
    "-c", "--concurrency", type=click.IntRange(min=1), help="Pool slots (default: CPU count)."
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "processes", "threads", "solo", "asyncio"]),
    help="Execution pool (default: worker_pool, prefork).",
)
@click.option(
    "-Q", "--queues", multiple=True, callback=_csv, help="Queues to consume (comma separated)."
)
@click.option("-X", "--exclude-queues", multiple=True, callback=_csv, help="Queues not to consume.")
@click.option("-l", "--loglevel", default="WARNING", show_default=True, help="Logging level.")
@click.option(
    "--prefetch-multiplier", type=click.IntRange(min=0), help="Messages claimed per pool slot."
)
@click.option(
    "--max-tasks-per-child", type=click.IntRange(min=1), help="Replace a pool child after N tasks."
)
@click.option("--time-limit", type=float, help="Hard time limit per task (s).")
@click.option("--soft-time-limit", type=float, help="Soft time limit per task (s).")
@click.option(
    "--purge", "--discard", "purge", is_flag=True, help="Purge the queues before starting."
)
@click.option(
    "-E", "--task-events", is_flag=True, help="Send task events (worker_send_task_events)."
)
@click.option("--without-mingle", is_flag=True, help="Do not sync with other workers at start.")
@click.option("--without-gossip", is_flag=True, help="Do not track the other workers.")
@click.option(
    "--without-heartbeat", is_flag=True, help="Send no worker-heartbeat (nor online/offline)."
)
@click.option(
    "--heartbeat-interval", type=click.FloatRange(min=0.01), help="Seconds between heartbeats."
)
@click.option("-S", "--statedb", help="File keeping revoked ids and the clock across restarts.")
@click.option("--autoscale", help="MAX,MIN: grow the pool under backlog, shrink it when idle.")
@click.option("--print-boot-graph", is_flag=True, help="Print the bootstep order and exit.")
@click.pass_obj
def worker(
    obj: CLIContext,
    hostname: str | None,
    concurrency: int | None,
    pool: str | None,
    queues: list[str],
    exclude_queues: list[str],
    loglevel: str,
    prefetch_multiplier: int | None,
    max_tasks_per_child: int | None,
    time_limit: float | None,
    soft_time_limit: float | None,
    purge: bool,
    task_events: bool,
    without_mingle: bool,
    without_gossip: bool,
    without_heartbeat: bool,
    heartbeat_interval: float | None,
    statedb: str | None,
    autoscale: str | None,
    print_boot_graph: bool,
) -> None:
    """Start a worker that executes tasks from the broker."""
    setup_logging(loglevel)
    app = obj.app
    if time_limit is not None:
        app.conf.task_time_limit = time_limit
    if soft_time_limit is not None:
        app.conf.task_soft_time_limit = soft_time_limit
    if task_events:
        app.conf.worker_send_task_events = True
    if pool == "processes":
        pool = "prefork"
    from ..worker.worker import parse_autoscale

    try:
        scale = parse_autoscale(autoscale)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--autoscale") from None
    w = app.Worker(
        without_mingle=without_mingle,
        without_gossip=without_gossip,
        without_heartbeat=without_heartbeat,
        heartbeat_interval=heartbeat_interval,
        statedb=statedb,
        autoscale=scale,
        hostname=hostname,
        concurrency=concurrency,
        pool=pool,
        queues=queues or None,
        exclude_queues=exclude_queues or None,
        max_tasks_per_child=max_tasks_per_child,
        prefetch_multiplier=prefetch_multiplier,
    )
    if print_boot_graph:
        click.echo(boot_graph(w))
        return
    app.import_default_modules()
    if purge:
        from .tasks import purge_queues

        count = purge_queues(app, queues or None)
        click.echo(f"Purged {count} message(s).", err=True)
    if not obj.quiet:
        click.echo(banner(w), err=True)
    sys.exit(w.start())


def boot_graph(w: WorkController) -> str:
    """Both blueprints, in start order, with what each step requires (user steps included)."""
    from ..worker._bootgraph import format_graph
    from ..worker.consumer.consumer import ConsumerBlueprint

    parts = []
    for bp in (w.blueprint, ConsumerBlueprint(name="consumer")):
        parts.append(format_graph(bp.name or "", bp.resolve(w), ()))
    return "\n\n".join(parts)


def banner(w: WorkController) -> str:
    """Celery-like start-up banner; the broker and backend passwords are masked."""
    from .. import __version__
    from ..messaging.transports.base import mask_url

    app = w.app
    conf = app.conf
    tasks = sorted(app.tasks.regular())
    queues = "\n".join(
        f"                .> {q.name:<16} exchange={q.effective_exchange.name}"
        f"({q.effective_exchange.type}) key={q.effective_routing_key}"
        for q in _banner_queues(w)
    )
    lines = [
        f" -------------- {w.hostname} v{__version__}",
        "--- ***** ----- ",
        f"-- ******* ---- {platform.platform()} "
        f"{platform.python_implementation()} {platform.python_version()}",
        "- *** --- * --- ",
        "- ** ---------- [config]",
        f"- ** ---------- .> app:         {app.main}:{id(app):#x}",
        f"- ** ---------- .> transport:   {mask_url(str(conf.broker_url))}",
        f"- ** ---------- .> results:     {mask_url(str(conf.result_backend or 'disabled'))}",
        f"- *** --- * --- .> concurrency: {_concurrency(w)} ({w.pool_name})",
        f"-- ******* ---- .> pid:         {os.getpid()}",
        "--- ***** ----- ",
        " -------------- [queues]",
        queues,
        "",
        "[tasks]",
        *(f"  . {name}" for name in tasks),
        "",
    ]
    return "\n".join(lines)


def _concurrency(w: WorkController) -> str:
    if w.autoscale is not None:
        return f"{{min={w.autoscale[1]}, max={w.autoscale[0]}}}"
    return str(w.concurrency)


def _banner_queues(w: WorkController) -> list:  # type: ignore[type-arg]
    from ..routing import make_queue

    names = w.queue_names or [w.app.conf.task_default_queue]
    return [make_queue(w.app, n) for n in names if n not in set(w.exclude_queues)]
