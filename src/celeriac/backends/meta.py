"""Building, encoding and reading task metas, and carrying exceptions through them.

A meta is the dict every result store holds per task (spec/celery-wire.md section 3.2).
Celery and celeriac read each other's metas, so the field names, the ISO-8601 ``date_done``
and the exception form ``{"exc_type", "exc_message", "exc_module"}`` are Celery's.

Rebuilding an exception from a meta is the dangerous step: the meta names a module and a
class, and whoever can write to the result store chooses those names (CVE-2021-23727).
:func:`exception_from_meta` therefore rebuilds only exception classes found in an
allowlist of modules, never imports anything outside it, and turns everything else into a
:class:`~celeriac.exceptions.RemoteTaskError` that carries the names as plain strings.
"""

from __future__ import annotations

import builtins
import importlib
import sys
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .. import exceptions as _exceptions
from .. import serialization, states
from ..exceptions import DecodeError, EncodeError, RemoteTaskError
from .base import Meta

__all__ = [
    "prepare_exception",
    "exception_from_meta",
    "make_meta",
    "encode_meta",
    "decode_meta",
    "serialize_meta",
    "EncodedMeta",
    "TRUSTED_EXCEPTION_MODULES",
]

#: Modules whose exception classes are always rebuilt (besides the app's task modules).
TRUSTED_EXCEPTION_MODULES: frozenset[str] = frozenset(
    {"builtins", "celeriac.exceptions", "celery.exceptions", "billiard.exceptions"}
)

#: Celery/billiard names that have a celeriac class of the same meaning.
_CELERY_MODULES = frozenset({"celery.exceptions", "billiard.exceptions"})

#: celeriac exceptions that carry a Celery name -> the module Celery defines it in. Metas
#: name that module, so a Celery client (which rebuilds only from modules it has loaded)
#: raises its own class, e.g. ``celery.exceptions.TaskRevokedError`` for an expired task.
_CELERY_HOMES: dict[str, str] = {
    "NotRegistered": "celery.exceptions",
    "TaskRevokedError": "celery.exceptions",
    "MaxRetriesExceededError": "celery.exceptions",
    "TimeLimitExceeded": "billiard.exceptions",
    "SoftTimeLimitExceeded": "billiard.exceptions",
    "WorkerLostError": "billiard.exceptions",
}

#: Exceptions that stop the *reading* process when raised (exit, interrupt, worker
#: shutdown). A task's failure with one of these is reported, never re-raised as such.
_INTERRUPTS: tuple[type[BaseException], ...] = (
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
    _exceptions.WorkerShutdown,
    _exceptions.WorkerTerminate,
)

#: Keys :func:`make_meta` writes itself; ``extended`` may not override them.
_CORE_KEYS = frozenset(
    {"status", "result", "traceback", "children", "date_done", "task_id", "group_id", "parent_id"}
)


# -- exceptions ---------------------------------------------------------------------------


def prepare_exception(exc: BaseException, serializer: str = "json") -> dict[str, Any]:
    """The wire form of ``exc``, as Celery writes it for non-pickle serializers.

    Each argument that ``serializer`` cannot encode is replaced by its ``repr`` so one
    odd argument never makes the whole failure unstorable.

    Args:
        exc: The exception to describe.
        serializer: Codec name the meta will be written with.
    """
    kind = type(exc)
    message: list[Any] = []
    for arg in exc.args:
        try:
            serialization.dumps(arg, serializer)
        except (EncodeError, RecursionError):
            message.append(_safe_repr(arg))
        else:
            message.append(list(arg) if isinstance(arg, tuple) else arg)
    if isinstance(exc, _exceptions.RemoteTaskError):
        # A stand-in for an exception we would not rebuild: keep the original's names.
        return {
            "exc_type": exc.exc_type,
            "exc_message": list(exc.exc_message)
            if isinstance(exc.exc_message, list | tuple)
            else [exc.exc_message],
            "exc_module": exc.exc_module,
        }
    module = kind.__module__
    if module == _exceptions.__name__:
        module = _CELERY_HOMES.get(kind.__name__, module)
    return {
        "exc_type": getattr(kind, "__qualname__", kind.__name__),
        "exc_message": message,
        "exc_module": module,
    }


def exception_from_meta(
    data: Mapping[str, Any] | BaseException, allowed_modules: Collection[str] = ()
) -> BaseException:
    """Rebuild the exception a meta describes, if it is safe to; else a RemoteTaskError.

    The class is looked up only in :data:`TRUSTED_EXCEPTION_MODULES` and in
    ``allowed_modules`` (the modules of the app's registered tasks). A module outside
    both is never imported; a trusted module is imported only if it is not loaded yet.
    The named attribute must be a ``BaseException`` subclass; Celery's revoke, time
    limit and worker-lost errors become celeriac's. Exceptions that would stop the
    reading process (``SystemExit``, ``KeyboardInterrupt``, worker shutdown) and classes
    whose constructor rejects the stored arguments arrive as ``RemoteTaskError`` too.

    Args:
        data: The ``result`` of a FAILURE/RETRY/REVOKED meta (or an exception already).
        allowed_modules: Extra modules whose exception classes may be rebuilt.

    Raises:
        DecodeError: ``data`` is not an exception description at all.
    """
    if isinstance(data, BaseException):
        return data
    if not isinstance(data, Mapping):
        raise DecodeError(
            f"stored exception must be a mapping with 'exc_type', got {type(data).__name__}: "
            f"{_safe_repr(data)}"
        )
    exc_type = data.get("exc_type")
    if not isinstance(exc_type, str) or not exc_type:
        raise DecodeError(f"stored exception has no 'exc_type': {_safe_repr(dict(data))}")
    exc_module = data.get("exc_module")
    if exc_module is not None and not isinstance(exc_module, str):
        raise DecodeError(f"stored exception has a non-string 'exc_module': {exc_module!r}")
    raw_message = data.get("exc_message", [])
    args = tuple(raw_message) if isinstance(raw_message, list | tuple) else (raw_message,)

    cls = _find_exception_class(exc_type, exc_module, allowed_modules)
    if cls is None or issubclass(cls, _INTERRUPTS):
        return RemoteTaskError(exc_type, exc_module, list(args))
    try:
        exc = cls(*args)
    except Exception:
        return RemoteTaskError(exc_type, exc_module, list(args))
    if not isinstance(exc, BaseException):  # a __new__ returning something else
        return RemoteTaskError(exc_type, exc_module, list(args))
    return exc


def _find_exception_class(
    exc_type: str, exc_module: str | None, allowed_modules: Collection[str]
) -> type[BaseException] | None:
    parts = exc_type.split(".")
    if any(not part.isidentifier() or part.startswith("_") for part in parts):
        return None
    module_name = exc_module or "builtins"
    if module_name in _CELERY_MODULES and len(parts) == 1:
        ours = getattr(_exceptions, parts[0], None)
        if _is_exception_class(ours) and parts[0] in _exceptions.__all__:
            return ours
    if module_name not in TRUSTED_EXCEPTION_MODULES and module_name not in allowed_modules:
        return None
    module: Any = builtins if module_name == "builtins" else sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except Exception:
            return None
    obj: Any = module
    for part in parts:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if _is_exception_class(obj) else None


def _is_exception_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


def _safe_repr(value: Any, limit: int = 1024) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the failure
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- metas --------------------------------------------------------------------------------


def make_meta(
    task_id: str,
    status: str,
    result: Any = None,
    traceback: str | None = None,
    *,
    children: list[Any] | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
    date_done: datetime | None = None,
    extended: Mapping[str, Any] | None = None,
) -> Meta:
    """A task meta in Celery's layout, ready for :meth:`Backend.store_many`.

    An exception ``result`` is stored in its prepared form (:func:`prepare_exception`).
    Ready states get ``date_done`` (now, unless given; a naive value is taken as UTC) as
    ISO-8601 with offset; other states get ``None``, as Celery writes them.

    Args:
        task_id: The task's id.
        status: A state name (:mod:`celeriac.states`) or a custom state.
        result: Return value, exception, or custom state meta.
        traceback: Formatted traceback of a failure.
        children: Result tuples of tasks sent by this task.
        group_id: Group the task belongs to.
        parent_id: Task that sent this one.
        date_done: When the task finished.
        extended: ``result_extended`` fields (``name``, ``args``, ``kwargs``, ``worker``,
            ``retries``, ``queue``, stamps).

    Raises:
        ValueError: Empty task id or status, or ``extended`` naming a core field.
    """
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"task_id must be a non-empty string, got {task_id!r}")
    if not isinstance(status, str) or not status:
        raise ValueError(f"status must be a non-empty state name, got {status!r}")
    if isinstance(result, BaseException):
        result = prepare_exception(result)
    done: str | None = None
    if status in states.READY_STATES:
        when = date_done or datetime.now(UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        done = when.isoformat()
    elif date_done is not None:
        done = (date_done if date_done.tzinfo else date_done.replace(tzinfo=UTC)).isoformat()
    meta: Meta = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": list(children or []),
        "date_done": done,
    }
    if group_id is not None:
        meta["group_id"] = group_id
    if parent_id is not None:
        meta["parent_id"] = parent_id
    if extended:
        clash = _CORE_KEYS.intersection(extended)
        if clash:
            raise ValueError(f"extended result fields may not override {sorted(clash)}")
        meta.update(extended)
    meta["task_id"] = task_id
    return meta


class EncodedMeta(NamedTuple):
    """A meta as stored: its status (for the ready-state guard) and its bytes."""

    status: str
    content_type: str
    content_encoding: str
    body: bytes


def serialize_meta(task_id: str, meta: Mapping[str, Any], serializer: str = "json") -> EncodedMeta:
    """Encode ``meta`` for storage; an unencodable result is stored as a FAILURE instead.

    A task that returns something the result serializer cannot hold has still finished;
    losing that silently would leave its caller waiting forever. Like Celery, the store
    records a FAILURE carrying an :class:`~celeriac.exceptions.EncodeError` that names
    the problem, keeping the task's other fields.

    Raises:
        ValueError: ``meta`` has no string ``status``.
        ConfigurationError: Unknown serializer name.
    """
    status = meta.get("status")
    if not isinstance(status, str) or not status:
        raise ValueError(f"meta for task {task_id!r} has no status: {_safe_repr(dict(meta))}")
    try:
        ctype, cenc, body = serialization.dumps(dict(meta), serializer)
    except (EncodeError, RecursionError) as exc:
        error = EncodeError(
            f"the {status} result of task {task_id} cannot be stored with the "
            f"{serializer!r} result serializer: {exc}"
        )
        fallback = {k: v for k, v in meta.items() if k not in _CORE_KEYS}
        failure = make_meta(
            task_id,
            states.FAILURE,
            error,
            None,
            group_id=meta.get("group_id"),
            parent_id=meta.get("parent_id"),
            extended=_encodable_only(fallback, serializer),
        )
        ctype, cenc, body = serialization.dumps(failure, serializer)
        return EncodedMeta(states.FAILURE, ctype, cenc, body)
    return EncodedMeta(status, ctype, cenc, body)


def _encodable_only(fields: Mapping[str, Any], serializer: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        try:
            serialization.dumps(value, serializer)
        except (EncodeError, RecursionError):
            out[key] = _safe_repr(value)
        else:
            out[key] = value
    return out


def encode_meta(meta: Mapping[str, Any], serializer: str = "json") -> bytes:
    """The bytes of ``meta`` in ``serializer``, as Celery's Redis backend stores them.

    Raises:
        EncodeError: A value cannot be represented by ``serializer``.
        ConfigurationError: Unknown serializer name.
    """
    return serialization.dumps(dict(meta), serializer)[2]


def decode_meta(
    data: bytes,
    content_type: str = "application/json",
    accept: Collection[str] | None = ("json",),
    content_encoding: str = "utf-8",
) -> Meta:
    """Decode stored meta bytes, checking the content type against ``accept`` first.

    Args:
        data: Stored bytes.
        content_type: Serializer name or content type the bytes were written with.
        accept: The backend's ``result_accept_content``.
        content_encoding: Character set of text formats.

    Raises:
        ContentDisallowed: ``content_type`` is not accepted; nothing was decoded.
        DecodeError: Undecodable bytes, or not a meta (a mapping with a string status).
    """
    if "/" not in content_type:
        codec = serialization.codec_for(content_type)
        content_type, content_encoding = codec.content_type, codec.content_encoding
    value = serialization.loads(data, content_type, content_encoding, accept)
    if not isinstance(value, dict) or not isinstance(value.get("status"), str):
        raise DecodeError(
            f"stored result is not a task meta (a mapping with a 'status'): {_safe_repr(value)}",
            body=bytes(data),
            content_type=content_type,
        )
    return value
