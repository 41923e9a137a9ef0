"""Settings: Celery's names and defaults, checked when set.

``Settings`` is the ``app.conf`` object: a mapping of every known setting with attribute
access. An unknown name is an error that names the closest known one (a typo in
``task_acks_late`` must not silently leave acks early), and typed settings coerce or refuse
their values when set, not when a worker first reads them hours later.

Sources, each returning a plain dict for ``Settings.update``:

* :func:`settings_from_object`: a module, class, instance, dict or import path, with
  Celery's ``namespace=`` (``CELERY_BROKER_URL`` -> ``broker_url``, as Django projects use);
* :func:`settings_from_env`: ``CELERIAC_*`` variables from a mapping the caller passes
  (nothing here reads the environment by itself, least of all at import).

Old upper-case names (``CELERY_ACKS_LATE``, ``CELERYD_CONCURRENCY``, ``BROKER_URL``,
``CELERY_RESULT_BACKEND``, ...) are accepted wherever a name is and mapped to the new ones.

celeriac defaults that differ from Celery's: ``broker_url`` and ``result_backend`` are
``"sqlite:///celeriac.db"`` (one embedded file, no server to install), and the settings
naming implementation classes (``beat_scheduler``, ``worker_autoscaler``,
``worker_consumer``) name celeriac's. ``worker_pool`` keeps Celery's ``"prefork"``,
``worker_concurrency`` keeps ``None`` (one process per CPU) and
``broker_transport_options`` keeps ``{}``.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from collections.abc import Iterator, Mapping, MutableMapping
from datetime import timedelta
from types import ModuleType
from typing import Any

import orjson

from ._config_table import flatten
from .exceptions import ConfigurationError
from .messaging.transports.base import mask_url

__all__ = [
    "DEFAULTS",
    "OLD_NAMES",
    "SETTING_TYPES",
    "ENV_RESERVED",
    "Settings",
    "coerce_setting",
    "settings_from_object",
    "settings_from_env",
]

_defaults, _types, _old_names = flatten()

#: Every setting with its default. Treat as read-only; ``Settings`` works on a deep copy.
DEFAULTS: dict[str, Any] = _defaults
#: Setting name -> value type (``bool``, ``int``, ``float``, ``duration``, ``list``,
#: ``dict``, ``str`` or ``any``).
SETTING_TYPES: dict[str, str] = _types
#: Old upper-case name (``CELERY_ACKS_LATE``) -> setting name (``task_acks_late``).
OLD_NAMES: dict[str, str] = _old_names
#: ``CELERIAC_<NAME>`` variables that configure the command line, not settings.
ENV_RESERVED: frozenset[str] = frozenset({"APP", "CONFIG", "WORKDIR", "LOGLEVEL", "LOGFILE"})

#: Lower-case prefixes of setting families: such an attribute in a config module that is not
#: a known setting is a typo, not an unrelated variable.
_FAMILIES = tuple(sorted({name.split("_", 1)[0] + "_" for name in DEFAULTS}))
_OLD_PREFIXES = ("CELERY_", "CELERYD_", "CELERYBEAT_", "BROKER_")

_TRUE = frozenset({"1", "true", "yes", "y", "on", "t"})
_FALSE = frozenset({"0", "false", "no", "n", "off", "f", ""})

#: Keys whose values are secrets wherever they appear (nested dicts included).
_SECRET_KEY = re.compile(
    r"pass(word|wd)?$|secret|token|api_?key|private_?key|signature|credential|^security_key$",
    re.IGNORECASE,
)
_MASK = "********"


def _resolve(key: str) -> str:
    """The setting name for ``key`` (new or old style); ConfigurationError if unknown."""
    if key in DEFAULTS:
        return key
    new = OLD_NAMES.get(key)
    if new is not None:
        return new
    if not isinstance(key, str):
        raise ConfigurationError(f"setting names are strings, got {key!r}", key=repr(key))
    known = list(OLD_NAMES) if key.isupper() else list(DEFAULTS)
    raise ConfigurationError.unknown_key(key, known)


def _type_error(key: str, expected: str, value: Any) -> ConfigurationError:
    return ConfigurationError(
        f"setting {key!r} expects {expected}, got {type(value).__name__} {value!r}", key=key
    )


def coerce_setting(key: str, value: Any) -> Any:
    """Check ``value`` for setting ``key`` and convert what has one obvious meaning.

    Strings are converted for typed settings (``"true"`` for a bool, ``"4"`` for an int,
    ``"json,msgpack"`` for a list), so values from environment variables and command lines
    work. ``None`` is accepted everywhere and means "not set".

    Raises:
        ConfigurationError: Unknown setting, or a value that does not fit its type; the
            message names the setting, the expected type and the value.
    """
    key = _resolve(key)
    kind = SETTING_TYPES[key]
    if value is None or kind == "any":
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _type_error(key, "a boolean", value)
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _type_error(key, "an integer", value)
    if kind in ("float", "duration"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if kind == "duration" and isinstance(value, timedelta):
            return value
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        expected = "a number of seconds" + (" or a timedelta" if kind == "duration" else "")
        raise _type_error(key, expected, value)
    if kind == "list":
        if isinstance(value, list | tuple):
            return value
        if isinstance(value, set | frozenset):
            return sorted(value)
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        raise _type_error(key, "a list (or a comma-separated string)", value)
    if kind == "dict":
        if isinstance(value, dict):
            return value
        if isinstance(value, Mapping):
            return dict(value)
        raise _type_error(key, "a mapping", value)
    if kind == "str":
        if isinstance(value, str):
            return value
        raise _type_error(key, "a string", value)
    raise AssertionError(f"unknown setting type {kind!r} for {key!r}")  # pragma: no cover


class Settings(MutableMapping[str, Any]):
    """The configuration of one app: every known setting, with attribute access.

    ``conf.broker_url`` and ``conf["broker_url"]`` read the same value; old upper-case names
    work too. Setting an unknown name raises :class:`ConfigurationError` with the closest
    known name; reading one raises it for item access and ``AttributeError`` (with the same
    hint) for attribute access, so ``getattr(conf, name, default)`` keeps working.
    Deleting a setting restores its default.

    Args:
        mapping: Initial values (validated like :meth:`update`).
        **kwargs: More initial values.
    """

    __slots__ = ("_data", "_explicit")

    _data: dict[str, Any]
    _explicit: set[str]

    def __init__(self, mapping: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        object.__setattr__(self, "_data", copy.deepcopy(DEFAULTS))
        object.__setattr__(self, "_explicit", set())
        if mapping or kwargs:
            self.update(mapping, **kwargs)

    # -- mapping protocol ---------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            return self._data[_resolve(key)]

    def __setitem__(self, key: str, value: Any) -> None:
        name = _resolve(key)
        self._data[name] = coerce_setting(name, value)
        self._explicit.add(name)

    def __delitem__(self, key: str) -> None:
        name = _resolve(key)
        self._data[name] = copy.deepcopy(DEFAULTS[name])
        self._explicit.discard(name)

    def __contains__(self, key: object) -> bool:
        return key in self._data or key in OLD_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (``default`` only when it is ``None``).

        Raises:
            ConfigurationError: ``key`` is not a known setting.
        """
        value = self[key]
        return default if value is None else value

    def update(self, mapping: Mapping[str, Any] | Any = None, /, **kwargs: Any) -> None:
        """Set many values at once; all are validated before any is applied.

        Raises:
            ConfigurationError: An unknown name, a bad value, or two spellings of one setting
                (``BROKER_URL`` and ``broker_url``) with different values. Nothing changes.
        """
        items: list[tuple[str, Any]] = []
        if mapping is not None:
            source = mapping.items() if isinstance(mapping, Mapping) else mapping
            items.extend(source)
        items.extend(kwargs.items())
        staged: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for key, value in items:
            name = _resolve(key)
            coerced = coerce_setting(name, value)
            if name in staged and spelled[name] != key and staged[name] != coerced:
                raise ConfigurationError(
                    f"setting {name!r} given twice with different values "
                    f"(as {spelled[name]!r} and {key!r})",
                    key=name,
                )
            staged[name] = coerced
            spelled[name] = key
        self._data.update(staged)
        self._explicit.update(staged)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Set ``key`` to ``default`` unless it was set explicitly; return its value."""
        name = _resolve(key)
        if name not in self._explicit:
            self[name] = default
        return self._data[name]

    # -- attribute access ---------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup failed: settings are not real attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._data[_resolve(name)]
        except ConfigurationError as exc:
            raise AttributeError(f"{exc}", name=name, obj=self) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise AttributeError(f"cannot set private attribute {name!r} on Settings")
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._data})

    # -- views --------------------------------------------------------------------------

    @property
    def changes(self) -> dict[str, Any]:
        """Settings whose value differs from the default."""
        return {k: v for k, v in self._data.items() if v != DEFAULTS[k]}

    def is_set(self, key: str) -> bool:
        """Whether ``key`` was given a value (even one equal to its default)."""
        return _resolve(key) in self._explicit

    def table(self, with_defaults: bool = False, mask: bool = True) -> dict[str, Any]:
        """``{name: value}``, only changes unless ``with_defaults``, secrets masked."""
        data = dict(self._data) if with_defaults else self.changes
        if mask:
            return {k: _mask(k, v) for k, v in sorted(data.items())}
        return dict(sorted(data.items()))

    def humanize(self, with_defaults: bool = False, mask: bool = True) -> str:
        """One ``name: repr(value)`` line per setting, for banners and bug reports.

        Passwords in URLs and secret-looking keys are masked unless ``mask=False``.
        """
        return "\n".join(
            f"{key}: {value!r}"
            for key, value in self.table(with_defaults, mask).items()
        )

    def copy(self) -> Settings:
        clone = Settings()
        clone._data.update(copy.deepcopy(self._data))
        clone._explicit.update(self._explicit)
        return clone

    def __repr__(self) -> str:
        changes = ", ".join(f"{k}={v!r}" for k, v in self.table().items())
        return f"<Settings {changes}>" if changes else "<Settings (defaults)>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_settings, (self._data, self._explicit))


def _rebuild_settings(data: dict[str, Any], explicit: set[str]) -> Settings:
    conf = Settings()
    conf._data.update(data)
    conf._explicit.update(explicit)
    return conf


def _mask(key: Any, value: Any) -> Any:
    """``value`` with secrets hidden: secret-named keys wholly, URL passwords partly."""
    if isinstance(key, str) and _SECRET_KEY.search(key) and value not in (None, "", {}):
        return _MASK
    if isinstance(value, str):
        return _mask_urls(value) if "://" in value else value
    if isinstance(value, Mapping):
        return {k: _mask(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mask(None, v) for v in value)
    return value


def _mask_urls(value: str) -> str:
    # Failover lists are written "url1;url2".
    return ";".join(mask_url(part) for part in value.split(";"))


# -- sources --------------------------------------------------------------------------------


def settings_from_object(obj: Any, namespace: str | None = None) -> dict[str, Any]:
    """Collect settings from a config module, class, instance, dict, or import path.

    Args:
        obj: A mapping; a module, class or instance (its attributes); or a string
            ``"pkg.module"`` / ``"pkg.module:attr"`` / ``"pkg.module.attr"`` to import.
        namespace: Only names starting with ``<namespace>_`` are settings, the rest of the
            name picks the setting case-insensitively (``namespace="CELERY"`` maps
            ``CELERY_BROKER_URL`` to ``broker_url``, as for Django settings).

    Without a namespace, lower-case names are settings and upper-case names are the old
    Celery ones. Other attributes (imports, helpers, private names) are ignored, but a
    non-callable name that looks like a setting (``task_acks_lat``, ``CELERY_ACKS_LAT``,
    or any mapping key) and is not one is an error, so a typo never goes unnoticed.

    Returns:
        ``{setting_name: value}`` (values not yet validated; ``Settings.update`` does that).

    Raises:
        ConfigurationError: Unknown setting names (with the closest match), an import path
            that does not exist.
        ImportError: The config module exists but failed to import.
    """
    if isinstance(obj, str):
        obj = _import_object(obj)
    strict = isinstance(obj, Mapping)
    if strict:
        items = list(obj.items())
    else:
        items = [(name, getattr(obj, name)) for name in dir(obj) if not name.startswith("_")]
    found: dict[str, Any] = {}
    if namespace:
        prefix = f"{namespace}_"
        for name, value in items:
            if not isinstance(name, str) or not name.startswith(prefix):
                continue
            key = name[len(prefix) :].lower()
            if key not in DEFAULTS:
                if not strict and _is_code(value):
                    continue
                raise ConfigurationError.unknown_key(name, (prefix + k.upper() for k in DEFAULTS))
            found[key] = value
        return found
    for name, value in items:
        if not isinstance(name, str):
            raise ConfigurationError(f"setting names are strings, got {name!r}", key=repr(name))
        if name in DEFAULTS:
            found[name] = value
        elif name in OLD_NAMES:
            found[OLD_NAMES[name]] = value
        elif strict or (_looks_like_setting(name) and not _is_code(value)):
            _resolve(name)  # raises with the closest known name
    return found


def _looks_like_setting(name: str) -> bool:
    if name.islower():
        return name.startswith(_FAMILIES)
    return name.isupper() and name.startswith(_OLD_PREFIXES)


def _is_code(value: Any) -> bool:
    return callable(value) or isinstance(value, ModuleType) or inspect.isclass(value)


def _import_object(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if not _is_missing(path, exc):
                raise  # the config module exists but one of its own imports failed
            if "." not in path:
                raise _not_found(path, exc) from exc
            module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_missing(module_name, exc):
            raise _not_found(path, exc) from exc
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(
            f"cannot load configuration {path!r}: module {module_name!r} has no {attr!r}"
        ) from None


def _is_missing(module_name: str, exc: ModuleNotFoundError) -> bool:
    """Whether ``exc`` says ``module_name`` (or a parent package of it) does not exist."""
    return bool(exc.name) and (module_name == exc.name or module_name.startswith(f"{exc.name}."))


def _not_found(path: str, exc: ModuleNotFoundError) -> ConfigurationError:
    return ConfigurationError(f"cannot load configuration {path!r}: {exc}")


def settings_from_env(environ: Mapping[str, str], prefix: str = "CELERIAC_") -> dict[str, Any]:
    """Settings from ``<prefix><NAME>`` variables, e.g. ``CELERIAC_BROKER_URL``.

    Values are parsed as JSON when they parse (``4``, ``true``, ``["json"]``,
    ``{"visibility_timeout": 60}``) and kept as strings otherwise; string settings always
    keep the raw text. Names in :data:`ENV_RESERVED` (``CELERIAC_APP``, ...) configure the
    command line and are skipped.

    Raises:
        ConfigurationError: An unknown name (naming the variable and the closest setting)
            or a value that does not fit the setting.
    """
    found: dict[str, Any] = {}
    for var, raw in environ.items():
        if not var.startswith(prefix):
            continue
        suffix = var[len(prefix) :]
        if suffix.upper() in ENV_RESERVED:
            continue
        key = suffix.lower()
        if key not in DEFAULTS:
            hint = ConfigurationError.unknown_key(key, DEFAULTS).suggestion
            did_you_mean = f"; did you mean {prefix}{hint.upper()}?" if hint else ""
            raise ConfigurationError(
                f"environment variable {var} names no setting{did_you_mean}",
                key=key,
                suggestion=hint,
            )
        value: Any = raw
        if SETTING_TYPES[key] != "str":
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                value = raw
        try:
            found[key] = coerce_setting(key, value)
        except ConfigurationError as exc:
            raise ConfigurationError(f"environment variable {var}: {exc}", key=key) from None
    return found
