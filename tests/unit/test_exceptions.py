"""Exceptions that cross process boundaries and result stores keep their identity."""

from __future__ import annotations

import pickle

import pytest

from celeriac.backends.meta import exception_from_meta, prepare_exception
from celeriac.exceptions import ConfigurationError, RemoteTaskError, SoftTimeLimitExceeded


def test_remote_task_error_survives_pickling() -> None:
    exc = RemoteTaskError("Unpicklable", "user.module", ["detail", 3])
    again = pickle.loads(pickle.dumps(exc))
    assert (again.exc_type, again.exc_module, again.exc_message) == (
        "Unpicklable",
        "user.module",
        ["detail", 3],
    )
    assert str(again) == str(exc)


def test_stand_in_is_stored_under_the_original_names() -> None:
    meta = prepare_exception(RemoteTaskError("Unpicklable", "user.module", ["detail"]))
    assert meta == {
        "exc_type": "Unpicklable",
        "exc_module": "user.module",
        "exc_message": ["detail"],
    }
    rebuilt = exception_from_meta(meta)
    assert isinstance(rebuilt, RemoteTaskError) and rebuilt.exc_type == "Unpicklable"


def test_celery_compatible_bases() -> None:
    # existing `except Exception` / `except ValueError` clauses keep working
    assert issubclass(SoftTimeLimitExceeded, Exception)
    assert issubclass(ConfigurationError, ValueError)


def test_unknown_key_suggestion() -> None:
    err = ConfigurationError.unknown_key("worker_concurency", ["worker_concurrency", "worker_pool"])
    assert err.suggestion == "worker_concurrency"
    with pytest.raises(ConfigurationError, match="did you mean 'worker_concurrency'"):
        raise err
