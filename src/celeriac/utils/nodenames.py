"""Node names: ``name@host`` identifies a worker in events, control replies and results.

Follows Celery so mixed clusters agree: a worker is ``celery@<host>`` unless named with
``-n``, whose value may use ``%h`` (full host), ``%n`` (name part of the host), ``%d``
(domain), ``%i`` (pool process index, ``0`` in the main process) and ``%I`` (``-<index>``
in a child, empty in the main process). Non-worker processes identify themselves as
``gen<pid>@<host>`` (the ``origin`` of the task messages they send).
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Callable

__all__ = [
    "NODENAME_SEP",
    "NODENAME_DEFAULT",
    "gethostname",
    "nodename",
    "nodesplit",
    "default_nodename",
    "gen_nodename",
    "expand_hostname",
    "node_format",
]

#: Separator between the name and the host of a node name.
NODENAME_SEP = "@"
#: Name part used when none is given.
NODENAME_DEFAULT = "celery"

_FORMAT_RE = re.compile(r"%(.?)", re.DOTALL)


@functools.cache
def gethostname() -> str:
    """This machine's host name, looked up once per process."""
    return socket.gethostname()


def nodename(name: str, host: str) -> str:
    """Join ``name`` and ``host`` into ``name@host``."""
    return f"{name}{NODENAME_SEP}{host}"


def nodesplit(node: str) -> tuple[str | None, str]:
    """Split ``name@host`` into ``(name, host)``; a bare host gives ``(None, host)``."""
    name, sep, host = node.partition(NODENAME_SEP)
    if not sep:
        return None, node
    return name, host


def default_nodename(hostname: str | None = None) -> str:
    """The worker's node name: ``celery@<this host>`` unless ``hostname`` says otherwise.

    A value without ``@`` is a host (``"w1.example.com"`` -> ``"celery@w1.example.com"``);
    an empty name or host part is filled with the default.
    """
    name, host = nodesplit(hostname or "")
    return nodename(name or NODENAME_DEFAULT, host or gethostname())


def gen_nodename(host: str | None = None) -> str:
    """``gen<pid>@<host>``: the identity of a non-worker process, recomputed per call.

    Computed on every call so a forked child reports its own pid.
    """
    return nodename(f"gen{os.getpid()}", host or gethostname())


def _index_or(index: int | None, fallback: str, prefix: str = "") -> str:
    return f"{prefix}{index}" if index else fallback


def expand_hostname(
    template: str,
    index: int | None = None,
    *,
    host: str | None = None,
    name: str | None = None,
    extra: dict[str, str] | None = None,
) -> str:
    """Expand Celery's ``%`` abbreviations in a node name or file name template.

    Args:
        template: E.g. ``"worker1@%h"`` or ``"%n%I.log"``.
        index: Pool process index (``None`` or ``0`` in the main process).
        host: The host to use for ``%h``/``%d``; this machine's by default.
        name: The value of ``%n``; the host's first label by default.
        extra: More one-letter keys (``node_format`` adds ``p``).

    Raises:
        ValueError: An unknown ``%x`` key; the message names it and the template.
    """
    full = host or gethostname()
    first, _, domain = full.partition(".")
    keys: dict[str, str | Callable[[], str]] = {
        "%": "%",
        "h": full,
        "n": name or first,
        "d": domain,
        "i": lambda: _index_or(index, "0"),
        "I": lambda: _index_or(index, "", "-"),
    }
    if extra:
        keys.update(extra)

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if not key:
            raise ValueError(f"dangling '%' at the end of {template!r}")
        try:
            value = keys[key]
        except KeyError:
            known = ", ".join(f"%{k}" for k in keys)
            raise ValueError(
                f"unknown format key %{key} in {template!r} (known: {known})"
            ) from None
        return value() if callable(value) else value

    return _FORMAT_RE.sub(replace, template)


def node_format(template: str, node: str, index: int | None = None) -> str:
    """Expand ``template`` for the worker ``node`` (``name@host``), as for ``--logfile``.

    ``%n`` is the node's name part, ``%h`` its host, ``%p`` the whole node name.
    """
    short, host = nodesplit(node)
    return expand_hostname(
        template, index, host=host, name=short or NODENAME_DEFAULT, extra={"p": node}
    )
