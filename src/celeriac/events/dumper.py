"""``celeriac events --dump``: one readable line per event, as events arrive.

A line is ``<time> <node> <type> <what> <fields>``, for example::

    12:00:01.204 w1@host task-received tasks.add[0cd9...] args=(2, 3) kwargs={} retries=0
    12:00:01.215 w1@host task-succeeded tasks.add[0cd9...] result=5 runtime=0.0113
    12:00:03.001 w1@host worker-heartbeat active=0 processed=1 freq=2.0

Task names are remembered from ``task-sent``/``task-received`` so later events of the same
task show them too (for a bounded number of tasks).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from datetime import datetime
from typing import Any, TextIO

from .payloads import Event

__all__ = ["Dumper", "format_event"]

#: Task names remembered for the lines of later events.
NAMES_KEPT = 10_000
#: Longest field value shown; longer ones are cut with an ellipsis.
VALUE_MAXLEN = 200

_HIDDEN = frozenset(
    {"type", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received", "uuid",
     "name", "sw_ident", "sw_ver", "sw_sys", "loadavg", "traceback"}
)  # fmt: skip


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= VALUE_MAXLEN else text[: VALUE_MAXLEN - 3] + "..."


def format_event(event: Event, name: str | None = None) -> str:
    """The one-line form of an event."""
    timestamp = event.get("timestamp")
    when = (
        datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3]
        if isinstance(timestamp, int | float)
        else "--:--:--.---"
    )
    parts = [when, str(event.get("hostname", "?")), str(event.get("type", "?"))]
    uuid = event.get("uuid")
    if uuid is not None:
        parts.append(f"{name or event.get('name') or '?'}[{uuid}]")
    for key, value in event.items():
        if key not in _HIDDEN:
            parts.append(f"{key}={_short(value)}")
    return " ".join(parts)


class Dumper:
    """Writes one line per event to ``out`` (standard output by default)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self._names: OrderedDict[str, str] = OrderedDict()

    def on_event(self, event: Event) -> None:
        uuid = event.get("uuid")
        name = None
        if isinstance(uuid, str):
            given = event.get("name")
            if isinstance(given, str):
                self._names[uuid] = given
                if len(self._names) > NAMES_KEPT:
                    self._names.popitem(last=False)
            name = self._names.get(uuid)
        self.out.write(format_event(event, name) + "\n")
        self.out.flush()
