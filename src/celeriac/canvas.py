"""Signatures: a task call packed as data (for ``link``, ``link_error`` and retries).

On the wire a signature is Celery's JSON object (spec/celery-wire.md 1.6): ``task``,
``args``, ``kwargs``, ``options``, ``subtask_type``, ``immutable``. Chains, groups and
chords build on this shape in a later step; this module keeps to single signatures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Celeriac
    from .result import AsyncResult

__all__ = ["Signature", "signature", "maybe_signature"]


@dataclass(frozen=True, slots=True)
class Signature:
    """An immutable description of one task call."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    subtask_type: str | None = None
    immutable: bool = False
    app: Celeriac | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))

    # -- wire form -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celeriac | None = None) -> Signature:
        if not isinstance(data, Mapping) or not isinstance(data.get("task"), str):
            raise ValueError(f"not a task signature: {data!r}")
        return cls(
            data["task"],
            tuple(data.get("args") or ()),
            dict(data.get("kwargs") or {}),
            dict(data.get("options") or {}),
            data.get("subtask_type"),
            bool(data.get("immutable", False)),
            app,
        )

    # -- deriving ------------------------------------------------------------------------

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy with ``args`` prepended (unless immutable), kwargs and options merged."""
        new_args = self.args if self.immutable or not args else tuple(args) + self.args
        new_kwargs = {**self.kwargs, **(kwargs or {})} if not self.immutable else dict(self.kwargs)
        return replace(self, args=new_args, kwargs=new_kwargs, options={**self.options, **options})

    def set(self, **options: Any) -> Signature:
        return replace(self, options={**self.options, **options})

    def on(self, app: Celeriac) -> Signature:
        return replace(self, app=app)

    # -- sending -------------------------------------------------------------------------

    def _app(self) -> Celeriac:
        if self.app is not None:
            return self.app
        from .app import current_app

        return current_app()

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        sig = self.clone(args, kwargs, **options)
        return sig._app().send_task(sig.task, sig.args, sig.kwargs, **sig.options)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        sig = self.clone(args, kwargs, **options)
        return await sig._app().asend_task(sig.task, sig.args, sig.kwargs, **sig.options)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)})"


def signature(task: str | Mapping[str, Any] | Signature, *args: Any, **kwargs: Any) -> Signature:
    """Celery's ``signature()``: from a name, a dict in wire form, or a Signature."""
    if isinstance(task, Signature):
        return task
    if isinstance(task, Mapping):
        return Signature.from_dict(task)
    return Signature(task, args, kwargs)


def maybe_signature(value: Any, app: Celeriac | None = None) -> Signature | None:
    if value is None:
        return None
    if isinstance(value, Signature):
        return value if app is None else value.on(app)
    return Signature.from_dict(value, app)
