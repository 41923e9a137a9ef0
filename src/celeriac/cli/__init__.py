"""The ``celeriac`` command line.

``main`` is imported first so that every subcommand module (``worker``, ``tasks``,
``demo``) can be imported on its own: ``main`` registers them, and they import ``main``.
"""

from .main import CLIContext, cli, main

__all__ = ["CLIContext", "cli", "main"]
