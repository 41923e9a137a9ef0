"""The ``celeriac`` command: global options and app discovery.

``-A`` finds the app as Celery does (``module:attr``, else ``module.app``,
``module.celery``, or the one app instance in the module), with the current directory
importable. Without ``-A`` a default app is used, configured from ``CELERIAC_*``
environment variables and ``-b``/``--result-backend``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from ..app import Celeriac
from ..exceptions import CeleriacError

__all__ = ["main", "cli", "CLIContext"]

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


class CLIContext:
    """What the global options resolved to; subcommands get the app from here."""

    def __init__(
        self,
        app_spec: str | None,
        broker: str | None,
        backend: str | None,
        workdir: str | None,
        no_color: bool,
        quiet: bool,
    ) -> None:
        self.app_spec = app_spec
        self.broker = broker
        self.backend = backend
        self.workdir = workdir
        self.no_color = no_color
        self.quiet = quiet
        self._app: Celeriac | None = None

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            self._app = self._load_app()
        return self._app

    def _load_app(self) -> Celeriac:
        if self.workdir:
            os.chdir(self.workdir)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        if self.app_spec:
            from ..utils.imports import find_app

            try:
                app = find_app(self.app_spec, Celeriac)
            except Exception as exc:
                raise click.UsageError(f"cannot load app {self.app_spec!r}: {exc}") from exc
            if not isinstance(app, Celeriac):
                raise click.UsageError(f"{self.app_spec!r} is not a celeriac app: {app!r}")
        else:
            app = Celeriac("default")
        overrides: dict[str, Any] = {}
        if self.broker:
            overrides["broker_url"] = self.broker
        if self.backend:
            overrides["result_backend"] = self.backend
        if overrides:
            app.conf.update(overrides)
            app._pinned.update(overrides)
        return app

    def echo(self, message: str = "", err: bool = False) -> None:
        if not self.quiet or err:
            click.echo(message, err=err)


def setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise click.BadParameter(f"unknown log level {level!r}", param_hint="-l/--loglevel")
    logging.basicConfig(level=numeric, format=LOG_FORMAT, stream=sys.stderr, force=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_spec", envvar="CELERIAC_APP", help="module[:attr] of the app.")
@click.option("-b", "--broker", help="Broker URL (overrides broker_url).")
@click.option("--result-backend", help="Result backend URL (overrides result_backend).")
@click.option("--workdir", type=click.Path(file_okay=False), help="Change to this directory first.")
@click.option("-C", "--no-color", is_flag=True, help="No colours in output.")
@click.option("-q", "--quiet", is_flag=True, help="Print less.")
@click.version_option(package_name="celeriac", prog_name="celeriac")
@click.pass_context
def cli(
    ctx: click.Context,
    app_spec: str | None,
    broker: str | None,
    result_backend: str | None,
    workdir: str | None,
    no_color: bool,
    quiet: bool,
) -> None:
    """celeriac: a distributed task queue with Celery's architecture."""
    ctx.obj = CLIContext(app_spec, broker, result_backend, workdir, no_color, quiet)


def _register_commands() -> None:
    from .control import control, inspect, revoke, status
    from .events import events, snapshots
    from .tasks import call, purge, result
    from .worker import worker

    cli.add_command(worker)
    cli.add_command(events)
    cli.add_command(snapshots)
    cli.add_command(call)
    cli.add_command(result)
    cli.add_command(purge)
    cli.add_command(inspect)
    cli.add_command(control)
    cli.add_command(status)
    cli.add_command(revoke)
    try:
        from .demo import demo
    except ImportError:  # pragma: no cover - demo is optional in slim installs
        return
    cli.add_command(demo)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``celeriac`` console script."""
    try:
        cli.main(args=argv, prog_name="celeriac", standalone_mode=True)
    except CeleriacError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
