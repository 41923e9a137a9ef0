"""``python -m celeriac`` is the ``celeriac`` command."""

from .cli.main import main

main()
