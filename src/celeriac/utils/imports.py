"""Import objects by name: bootsteps, pools, backends, ``-A`` app specs.

Names come from users (command lines, settings, ``requires`` of a bootstep), so the
errors say exactly what was tried and what failed, and an import error *inside* the
user's module is never mistaken for "module not found".
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from ..exceptions import CeleriacError

__all__ = ["SymbolNotFound", "AppNotFound", "symbol_by_name", "find_app", "add_cwd_to_path"]


class SymbolNotFound(CeleriacError, ImportError):
    """A ``"pkg.module:attr"`` name names no importable object."""


class AppNotFound(CeleriacError, ImportError):
    """An ``-A``/``--app`` spec led to no app instance; the message lists what was tried."""


def _split(name: str) -> tuple[str, str | None]:
    """``"a.b:c.d"`` -> (``"a.b"``, ``"c.d"``); ``"a.b.c"`` -> (``"a.b"``, ``"c"``)."""
    if ":" in name:
        module, _, attr = name.partition(":")
        if not module or not attr or ":" in attr:
            raise SymbolNotFound(f"malformed name {name!r}: expected 'package.module:attribute'")
        return module, attr
    module, _, attr = name.rpartition(".")
    if not module:
        return attr, None  # a bare module name
    return module, attr


def _import_module(module: str, name: str, package: str | None) -> ModuleType:
    try:
        return importlib.import_module(module, package=package)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        wanted = importlib.util.resolve_name(module, package) if module.startswith(".") else module
        # Only "the module we asked for (or one of its parents) does not exist" is ours to
        # report; a missing dependency *inside* the user's module keeps its own traceback.
        if wanted == missing or wanted.startswith(missing + "."):
            raise SymbolNotFound(f"cannot import {name!r}: no module named {missing!r}") from exc
        raise
    except (TypeError, ValueError) as exc:  # empty or relative name without package
        raise SymbolNotFound(f"cannot import {name!r}: {exc}") from exc


def symbol_by_name(name: Any, package: str | None = None) -> Any:
    """Return the object named ``name``.

    Accepts ``"pkg.module:attr"`` (``attr`` may be dotted, ``"pkg.mod:Class.method"``),
    ``"pkg.module.attr"`` and a bare ``"module"`` (the module itself). Relative names
    (``".mod:attr"``) resolve against ``package``. Anything that is not a string is
    returned as is, so settings may hold either a class or its name.

    Raises:
        SymbolNotFound: The module does not exist or lacks the attribute (also an
            ``ImportError``).
        ImportError: The module exists but failed to import (its own error, unchanged).
    """
    if not isinstance(name, str):
        return name
    if not name or name.strip() != name:
        raise SymbolNotFound(f"malformed name {name!r}: expected 'package.module:attribute'")
    module_name, attr = _split(name)
    module = _import_module(module_name, name, package)
    if attr is None:
        return module
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SymbolNotFound(
                f"cannot import {name!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    return obj


def add_cwd_to_path() -> None:
    """Make modules in the current directory importable, as ``python -m`` does.

    ``celeriac -A proj worker`` run from a project root must find ``proj`` without the
    user setting ``PYTHONPATH``; pool children forked later inherit the path.
    """
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # the directory was removed under us
        return
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _app_attr(module: ModuleType, attr: str) -> object | None:
    found: object = getattr(module, attr, None)
    if found is None or isinstance(found, ModuleType):
        return None
    return found


def _check(found: object, spec: str, app_type: type) -> object:
    if isinstance(found, app_type):
        return found
    kind = "a class" if isinstance(found, type) else type(found).__name__
    hint = ""
    if callable(found) and not isinstance(found, type):
        hint = " (factories are not called: expose the app instance, e.g. 'app = create_app()')"
    raise AppNotFound(f"{spec!r} is {kind}, not a {app_type.__name__} instance{hint}")


def find_app(spec: str, app_type: type, *, add_cwd: bool = True) -> object:
    """Find the app an ``-A`` spec names, following Celery's rules in Celery's order.

    1. ``"module:attr"``: exactly that object.
    2. ``"module.attr"``: that object when ``attr`` is not a submodule.
    3. ``"module"``: ``module.app``, then ``module.celery`` (when not modules), then the
       submodule ``module.celery`` of a package searched the same way, then the one
       instance of ``app_type`` among the module's globals.

    Like Celery, a function found at the spec is not called as a factory.

    Args:
        spec: The ``-A`` value.
        app_type: The app class; the result is an instance of it.
        add_cwd: Make the current directory importable first (the CLI's behaviour).

    Raises:
        AppNotFound: Nothing matched; the message lists every place looked at.
        ImportError: The user's module itself failed to import (its error, unchanged).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise AppNotFound(f"empty app spec {spec!r}: expected 'module' or 'module:attr'")
    if add_cwd:
        add_cwd_to_path()
    if ":" in spec:
        try:
            return _check(symbol_by_name(spec), spec, app_type)
        except SymbolNotFound as exc:
            raise AppNotFound(f"cannot load app {spec!r}: {exc}") from exc
    try:
        found = symbol_by_name(spec)
    except SymbolNotFound as first:
        # "proj.tasks" where proj/__init__ did not import tasks: try it as a module.
        try:
            found = _import_module(spec, spec, None)
        except SymbolNotFound:
            raise AppNotFound(f"cannot load app {spec!r}: {first}") from first
    if not isinstance(found, ModuleType):
        return _check(found, spec, app_type)
    return _search_module(found, spec, app_type)


def _search_module(module: ModuleType, spec: str, app_type: type) -> object:
    tried: list[str] = []
    for attr in ("app", "celery"):
        tried.append(f"{spec}.{attr}")
        found = _app_attr(module, attr)
        if found is not None:
            return _check(found, f"{spec}.{attr}", app_type)
    if getattr(module, "__path__", None) is not None:
        sub = f"{spec}.celery"
        tried.append(f"module {sub}")
        try:
            submodule = importlib.import_module(sub)
        except ModuleNotFoundError as exc:
            if exc.name != sub:
                raise
        else:
            try:
                return _search_module(submodule, sub, app_type)
            except AppNotFound as exc:
                tried.append(f"(in {sub}: {exc})")
    tried.append(f"an instance of {app_type.__name__} in {spec}")
    instances: dict[int, tuple[str, object]] = {}
    for key, value in vars(module).items():
        if isinstance(value, app_type):
            instances.setdefault(id(value), (key, value))
    if len(instances) == 1:
        return next(iter(instances.values()))[1]
    if len(instances) > 1:
        names = ", ".join(sorted(key for key, _ in instances.values()))
        raise AppNotFound(
            f"module {spec!r} holds several {app_type.__name__} instances ({names}); "
            f"name one with '{spec}:<attr>'"
        )
    raise AppNotFound(f"no {app_type.__name__} app found for {spec!r}; tried " + ", ".join(tried))
