"""A bounded ``repr`` that never raises, for ``argsrepr``/``kwargsrepr``, logs and events.

Task arguments are user data: a 100 MB list, an object whose ``__repr__`` raises, a
self-referencing dict. Rendering them must neither fail the publish nor cost time and
memory in proportion to their size, so builtin containers are rendered piece by piece
and rendering stops as soon as ``maxlen`` characters exist.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

__all__ = ["saferepr"]

#: How deep nested builtin containers are expanded before showing ``...``.
DEFAULT_MAXLEVELS = 3

_EMPTY: dict[type, str] = {set: "set()", frozenset: "frozenset()", deque: "deque([])"}
_SEQUENCES: dict[type, tuple[str, str]] = {
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
    deque: ("deque([", "])"),
}


def _placeholder(obj: Any, exc: BaseException | None = None) -> str:
    try:
        name = type(obj).__qualname__
    except Exception:  # pragma: no cover - a type without a name is hardly possible
        name = "object"
    reason = f": {type(exc).__name__}" if exc is not None else ""
    return f"<unrepresentable {name} object at {id(obj):#x}{reason}>"


def _leaf(obj: Any, maxlen: int) -> str:
    try:
        kind = type(obj)
        if kind is str or kind is bytes or kind is bytearray:
            # Cut before repr so a huge string costs maxlen, not its size.
            return repr(obj[: maxlen + 1])
        text = repr(obj)
        if not isinstance(text, str):
            return _placeholder(obj)
        return text
    except Exception as exc:
        return _placeholder(obj, exc)


def _is_plain(obj: Any, base: type) -> bool:
    """True for ``base`` and subclasses that do not define their own ``__repr__``."""
    method: object = type(obj).__repr__
    return isinstance(obj, base) and method is base.__repr__


def _tokens(obj: Any, maxlen: int, level: int, seen: set[int]) -> Iterator[str]:
    if _is_plain(obj, dict):
        if not obj:
            yield "{}"
            return
        if level <= 0 or id(obj) in seen:
            yield "{...}"
            return
        seen.add(id(obj))
        yield "{"
        for index, (key, value) in enumerate(obj.items()):
            if index:
                yield ", "
            yield from _tokens(key, maxlen, level - 1, seen)
            yield ": "
            yield from _tokens(value, maxlen, level - 1, seen)
        yield "}"
        seen.discard(id(obj))
        return
    base = next((b for b in _SEQUENCES if _is_plain(obj, b)), None)
    if base is None:
        yield _leaf(obj, maxlen)
        return
    opener, closer = _SEQUENCES[base]
    if not obj:
        yield _EMPTY.get(base, opener + closer)
        return
    if level <= 0 or id(obj) in seen:
        yield f"{opener}...{closer}"
        return
    seen.add(id(obj))
    yield opener
    for index, item in enumerate(obj):
        if index:
            yield ", "
        yield from _tokens(item, maxlen, level - 1, seen)
    if base is tuple and len(obj) == 1:
        yield ","
    yield closer
    seen.discard(id(obj))


#: Types whose ``repr`` is safe, cheap and flat.
_SCALARS = frozenset({type(None), bool, int, float})


def saferepr(obj: Any, maxlen: int = 1024, maxlevels: int = DEFAULT_MAXLEVELS) -> str:
    """Return ``repr(obj)`` cut to at most ``maxlen`` characters, never raising.

    Builtin containers are rendered lazily, ``maxlevels`` deep, with cycles shown as
    ``[...]``; other objects use their own ``repr``, and one that raises is shown as
    ``<unrepresentable Type object at 0x...: Error>``. Truncated output ends in ``...``.

    Args:
        obj: Anything.
        maxlen: Longest result, in characters (at least 1).
        maxlevels: Container nesting expanded before ``...``.

    Raises:
        ValueError: ``maxlen`` is below 1 (a programming error, not a data problem).
    """
    if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
        raise ValueError(f"saferepr maxlen must be an int >= 1, got {maxlen!r}")
    if type(obj) in _SCALARS:  # the common results (None, numbers): no tokenizer
        try:
            text = repr(obj)
        except ValueError:  # an int past sys.get_int_max_str_digits: the slow path says so
            text = ""
        if text and len(text) <= maxlen:
            return text
    parts: list[str] = []
    size = 0
    try:
        for token in _tokens(obj, maxlen, maxlevels, set()):
            parts.append(token)
            size += len(token)
            if size > maxlen:
                break
        text = "".join(parts)
    except Exception as exc:  # e.g. a container mutated by another thread mid-render
        text = _placeholder(obj, exc)
    if len(text) <= maxlen:
        return text
    if maxlen <= 3:
        return text[:maxlen]
    return text[: maxlen - 3] + "..."
