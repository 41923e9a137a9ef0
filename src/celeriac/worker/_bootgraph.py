"""Resolving, ordering and drawing bootstep graphs (the pure part of :mod:`.bootsteps`).

Kept apart from the step classes so the graph rules can be read and tested on their
own: which classes take part, in what order, and what is an error.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any, cast

from ..exceptions import ConfigurationError
from ..utils.imports import symbol_by_name

__all__ = ["CyclicDependencyError", "resolve_steps", "format_graph", "to_dot"]

StepClass = type[Any]


class CyclicDependencyError(ConfigurationError):
    """Steps require each other in a loop; ``cycle`` lists the step names around it."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(
            "bootstep dependency cycle (each requires the next): " + " -> ".join(self.cycle)
        )


def _label(cls: StepClass) -> str:
    return str(cls.label or cls.__name__)


def _candidates(spec: str) -> list[str]:
    """Names a requirement string may match: as written, and dotted form as ``mod:Cls``."""
    if ":" in spec:
        return [spec]
    module, _, attr = spec.rpartition(".")
    return [spec, f"{module}:{attr}"] if module else [spec]


def _load(spec: Any, base: type, what: str) -> StepClass:
    try:
        obj = symbol_by_name(spec)
    except ImportError as exc:
        raise ConfigurationError(f"{what} {spec!r} cannot be imported: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigurationError(f"{what} {spec!r} is {obj!r}, not a {base.__name__} subclass")
    return obj


def _collect(tiers: Sequence[Iterable[Any]], base: type) -> dict[str, StepClass]:
    """Steps by name; a later tier (user steps) replaces an earlier one's same-named step."""
    by_name: dict[str, StepClass] = {}
    for tier in tiers:
        seen: dict[str, StepClass] = {}
        for spec in tier:
            cls = _load(spec, base, "bootstep")
            other = seen.get(cls.name)
            if other is not None and other is not cls:
                raise ConfigurationError(
                    f"two different bootsteps are named {cls.name!r}: {other!r} and {cls!r}"
                )
            seen[cls.name] = cls
        by_name.update(seen)
    return by_name


def _requirements(by_name: dict[str, StepClass], base: type) -> dict[str, set[str]]:
    """Follow ``requires`` transitively, adding pulled-in steps to ``by_name``."""
    deps: dict[str, set[str]] = {}
    queue = sorted(by_name)
    while queue:
        name = queue.pop()
        if name in deps:
            continue
        cls = by_name[name]
        deps[name] = set()
        for req in cls.requires:
            found: StepClass | None
            if isinstance(req, str):
                found = next((by_name[c] for c in _candidates(req) if c in by_name), None)
                if found is None:
                    found = _load(req, base, f"bootstep {name!r} requires")
            elif isinstance(req, type) and issubclass(req, base):
                found = cast(StepClass, req)
            else:
                raise ConfigurationError(
                    f"bootstep {name!r} requires {req!r}: expected a step class or "
                    "'pkg.module:Class'"
                )
            # The blueprint's own step of that name wins (a user override applies to
            # everything that requires it).
            found = by_name.setdefault(found.name, found)
            if found.last and not cls.last:
                raise ConfigurationError(
                    f"bootstep {name!r} requires {found.name!r}, which is marked last "
                    "(started after every other step)"
                )
            deps[name].add(found.name)
            if found.name not in deps:
                queue.append(found.name)
    return deps


def _find_cycle(remaining: set[str], deps: dict[str, set[str]]) -> list[str]:
    """Walk requirements inside ``remaining`` (each has one there) until a name repeats."""
    path: list[str] = []
    position: dict[str, int] = {}
    node = min(remaining)
    while node not in position:
        position[node] = len(path)
        path.append(node)
        node = min(d for d in deps[node] if d in remaining)
    cycle = path[position[node] :]
    return [*cycle, cycle[0]]


def _toposort(names: set[str], deps: dict[str, set[str]]) -> list[str]:
    """Kahn's algorithm restricted to ``names``; ready steps leave in name order."""
    pending = {n: {d for d in deps[n] if d in names} for n in names}
    dependents: dict[str, list[str]] = {n: [] for n in names}
    for n, ds in pending.items():
        for d in ds:
            dependents[d].append(n)
    ready = [n for n, ds in pending.items() if not ds]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for m in dependents[n]:
            pending[m].discard(n)
            if not pending[m]:
                heapq.heappush(ready, m)
    if len(order) != len(names):
        remaining = names - set(order)
        raise CyclicDependencyError(_find_cycle(remaining, deps))
    return order


def resolve_steps(tiers: Sequence[Iterable[Any]], base: type) -> list[StepClass]:
    """Step classes from ``tiers`` (lowest precedence first) plus requirements, ordered.

    Requirements come before the steps needing them; ties go by name so the result is
    the same on every run; ``last`` steps follow all others.

    Raises:
        CyclicDependencyError: The requirements loop; the message shows the loop.
        ConfigurationError: A step or requirement cannot be imported, is not a step, has
            a same-named rival, or a non-last step requires a last one.
    """
    by_name = _collect(tiers, base)
    deps = _requirements(by_name, base)
    first = {n for n, cls in by_name.items() if not cls.last}
    final = set(by_name) - first
    return [by_name[n] for n in (*_toposort(first, deps), *_toposort(final, deps))]


def _requires_labels(cls: StepClass, by_name: dict[str, StepClass]) -> list[str]:
    labels = []
    for req in cls.requires:
        if isinstance(req, str):
            found = next((by_name[c] for c in _candidates(req) if c in by_name), None)
            labels.append(_label(found) if found is not None else req)
        else:
            labels.append(_label(by_name.get(req.name, req)))
    return labels


def format_graph(name: str, classes: Sequence[StepClass], excluded: Iterable[type]) -> str:
    """Human-readable boot order: ``N. Label  [flags]  requires: A, B``."""
    by_name = {cls.name: cls for cls in classes}
    skipped = set(excluded)
    count = sum(1 for cls in classes if cls not in skipped)
    lines = [f"Blueprint {name!r}: {count} steps in boot order"]
    number = 0
    for cls in classes:
        if cls in skipped:
            prefix = "   -."
        else:
            number += 1
            prefix = f"{number:4d}."
        flags = [flag for flag, on in (("last", cls.last), ("not included", cls in skipped)) if on]
        line = f"{prefix} {_label(cls)}"
        if flags:
            line += "  [" + ", ".join(flags) + "]"
        requires = _requires_labels(cls, by_name)
        if requires:
            line += "  requires: " + ", ".join(requires)
        lines.append(line + f"  ({cls.name})")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(name: str, classes: Sequence[StepClass]) -> str:
    """Graphviz text: one node per step (labelled), an edge from each step to each need."""
    by_name = {cls.name: cls for cls in classes}
    lines = [f"digraph {_quote(name)} {{", "    node [shape=box];"]
    for cls in classes:
        attrs = f"label={_quote(_label(cls))}"
        if cls.last:
            attrs += ", style=bold"
        lines.append(f"    {_quote(cls.name)} [{attrs}];")
    for cls in classes:
        for req in cls.requires:
            if isinstance(req, str):
                target = next((c for c in _candidates(req) if c in by_name), req)
            else:
                target = req.name
            lines.append(f"    {_quote(cls.name)} -> {_quote(target)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
