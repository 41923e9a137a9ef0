"""Task metas: Celery's layout, exception round trips, and the exception allowlist."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from celeriac import exceptions, states
from celeriac.backends.meta import (
    decode_meta,
    encode_meta,
    exception_from_meta,
    make_meta,
    prepare_exception,
    serialize_meta,
)
from celeriac.exceptions import ContentDisallowed, DecodeError, RemoteTaskError


class NeedsTwoArgs(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class PlainTaskError(Exception):
    pass


class Outer:
    class Inner(ValueError):
        pass


# -- prepare_exception ----------------------------------------------------------------------


def test_prepare_exception_has_celerys_shape() -> None:
    assert prepare_exception(ValueError("bad value", 7)) == {
        "exc_type": "ValueError",
        "exc_message": ["bad value", 7],
        "exc_module": "builtins",
    }


def test_prepare_exception_uses_qualname_and_module() -> None:
    data = prepare_exception(Outer.Inner("x"))
    assert data["exc_type"] == "Outer.Inner"
    assert data["exc_module"] == __name__


def test_prepare_exception_replaces_unserializable_args_with_repr() -> None:
    # Given an argument JSON cannot hold
    marker = object()
    data = prepare_exception(RuntimeError("ctx", marker, (1, 2)))
    # Then only that argument becomes its repr; tuples become lists
    assert data["exc_message"] == ["ctx", repr(marker), [1, 2]]


@pytest.mark.parametrize(
    ("ours", "module"),
    [
        (exceptions.TaskRevokedError("expired"), "celery.exceptions"),
        (exceptions.NotRegistered("x.y"), "celery.exceptions"),
        (exceptions.MaxRetriesExceededError("too many"), "celery.exceptions"),
        (exceptions.TimeLimitExceeded(5.0), "billiard.exceptions"),
        (exceptions.SoftTimeLimitExceeded(), "billiard.exceptions"),
        (exceptions.WorkerLostError("gone"), "billiard.exceptions"),
    ],
)
def test_exceptions_with_celerys_names_are_stored_under_celerys_modules(
    ours: BaseException, module: str
) -> None:
    # Given one of our exceptions that a Celery client knows by name
    data = prepare_exception(ours)
    # Then the meta names Celery's module (a Celery client rebuilds only from modules it
    # has loaded, and would otherwise invent a class its `except` clauses do not catch)
    assert data["exc_type"] == type(ours).__name__
    assert data["exc_module"] == module
    # And it reads back as our own class
    assert type(exception_from_meta(data)) is type(ours)


# -- exception_from_meta: what is rebuilt ---------------------------------------------------


def test_builtin_exception_round_trips() -> None:
    exc = exception_from_meta(prepare_exception(KeyError("k")))
    assert type(exc) is KeyError
    assert exc.args == ("k",)


def test_celeriac_exceptions_are_rebuilt() -> None:
    exc = exception_from_meta(prepare_exception(exceptions.TaskRevokedError("revoked")))
    assert type(exc) is exceptions.TaskRevokedError


@pytest.mark.parametrize(
    ("celery_name", "module", "ours"),
    [
        ("TaskRevokedError", "celery.exceptions", exceptions.TaskRevokedError),
        ("TimeLimitExceeded", "celery.exceptions", exceptions.TimeLimitExceeded),
        ("SoftTimeLimitExceeded", "celery.exceptions", exceptions.SoftTimeLimitExceeded),
        ("WorkerLostError", "celery.exceptions", exceptions.WorkerLostError),
        ("WorkerLostError", "billiard.exceptions", exceptions.WorkerLostError),
        ("SoftTimeLimitExceeded", "billiard.exceptions", exceptions.SoftTimeLimitExceeded),
    ],
)
def test_celery_names_map_to_ours(celery_name: str, module: str, ours: type) -> None:
    exc = exception_from_meta(
        {"exc_type": celery_name, "exc_message": ["expired"], "exc_module": module}
    )
    assert type(exc) is ours
    assert exc.args == ("expired",)


def test_task_module_exceptions_need_the_allowlist() -> None:
    data = prepare_exception(PlainTaskError("boom"))
    assert type(exception_from_meta(data, allowed_modules={__name__})) is PlainTaskError
    remote = exception_from_meta(data)
    assert isinstance(remote, RemoteTaskError)
    assert (remote.exc_type, remote.exc_module, remote.exc_message) == (
        "PlainTaskError", __name__, ["boom"],
    )


def test_nested_class_in_allowed_module_is_rebuilt() -> None:
    exc = exception_from_meta(prepare_exception(Outer.Inner("x")), allowed_modules={__name__})
    assert type(exc) is Outer.Inner


def test_exception_whose_init_rejects_stored_args_becomes_remote_error() -> None:
    # Given an exception class whose __init__ takes other arguments than its args
    data = prepare_exception(NeedsTwoArgs(404, "missing"))
    # When the client rebuilds it, it must not crash
    exc = exception_from_meta(data, allowed_modules={__name__})
    assert isinstance(exc, RemoteTaskError)
    assert exc.exc_type == "NeedsTwoArgs"
    assert "404: missing" in str(exc)


def test_old_style_string_message_is_one_argument() -> None:
    data = {"exc_type": "ValueError", "exc_message": "plain", "exc_module": "builtins"}
    exc = exception_from_meta(data)
    assert exc.args == ("plain",)


def test_exception_instance_passes_through() -> None:
    original = ValueError("x")
    assert exception_from_meta(original) is original


@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_interrupts_are_reported_not_raised_as_themselves(name: str) -> None:
    exc = exception_from_meta({"exc_type": name, "exc_message": [0], "exc_module": "builtins"})
    assert isinstance(exc, RemoteTaskError)
    assert exc.exc_type == name


def test_worker_shutdown_is_reported_not_rebuilt() -> None:
    data = prepare_exception(exceptions.WorkerShutdown())
    assert isinstance(exception_from_meta(data), RemoteTaskError)


# -- exception_from_meta: attacks ------------------------------------------------------------


def test_os_system_in_meta_is_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    data = {"exc_type": "system", "exc_message": ["touch /tmp/pwned"], "exc_module": "os"}
    exc = exception_from_meta(data)
    assert isinstance(exc, RemoteTaskError)
    assert calls == []


def test_subprocess_popen_is_never_called_even_when_module_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[object, ...]] = []

    class Recorder:
        def __init__(self, *args: object) -> None:
            calls.append(args)

    monkeypatch.setattr(subprocess, "Popen", Recorder)
    data = {"exc_type": "Popen", "exc_message": [["id"]], "exc_module": "subprocess"}
    # Not allowed: refused by module; allowed: refused because Popen is no exception class
    assert isinstance(exception_from_meta(data), RemoteTaskError)
    assert isinstance(exception_from_meta(data, allowed_modules={"subprocess"}), RemoteTaskError)
    assert calls == []


def test_attribute_path_to_a_function_in_an_allowed_module_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a task module that happens to import os
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    data = {"exc_type": "os.system", "exc_message": ["id"], "exc_module": __name__}
    assert isinstance(exception_from_meta(data, allowed_modules={__name__}), RemoteTaskError)
    assert calls == []


def test_unloaded_module_is_never_imported() -> None:
    # `this` prints the Zen of Python on import: a stand-in for any import side effect
    sys.modules.pop("this", None)
    data = {"exc_type": "Exception", "exc_message": [], "exc_module": "this"}
    assert isinstance(exception_from_meta(data), RemoteTaskError)
    assert "this" not in sys.modules


def test_private_and_dunder_names_are_refused() -> None:
    for exc_type in ("__class__", "_private", "ValueError.__base__", "Value Error"):
        data = {"exc_type": exc_type, "exc_message": [], "exc_module": "builtins"}
        assert isinstance(exception_from_meta(data), RemoteTaskError), exc_type


def test_non_exception_builtin_is_refused() -> None:
    data = {"exc_type": "eval", "exc_message": ["1+1"], "exc_module": "builtins"}
    assert isinstance(exception_from_meta(data), RemoteTaskError)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("just a string", "must be a mapping"),
        ({"exc_message": ["x"]}, "no 'exc_type'"),
        ({"exc_type": "ValueError", "exc_module": 3}, "non-string 'exc_module'"),
    ],
)
def test_malformed_exception_data_is_a_decode_error(data: object, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        exception_from_meta(data)  # type: ignore[arg-type]


# -- make_meta ------------------------------------------------------------------------------


def test_success_meta_has_celerys_fields_and_iso_date_with_offset() -> None:
    meta = make_meta("t1", states.SUCCESS, 5)
    assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert meta["result"] == 5 and meta["task_id"] == "t1"
    done = datetime.fromisoformat(meta["date_done"])
    assert done.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - done) < timedelta(minutes=1)


def test_unready_meta_has_no_date_done() -> None:
    assert make_meta("t1", states.STARTED, {"pid": 1, "hostname": "w@h"})["date_done"] is None


def test_naive_date_done_is_taken_as_utc_and_aware_kept() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    done = make_meta("t", states.SUCCESS, date_done=naive)["date_done"]
    assert done == "2026-01-02T03:04:05+00:00"
    aware = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert make_meta("t", states.FAILURE, date_done=aware)["date_done"].endswith("+02:00")


def test_failure_meta_prepares_the_exception_and_keeps_ids() -> None:
    meta = make_meta(
        "t1", states.FAILURE, ValueError("bad"), "Traceback...",
        group_id="g", parent_id="p", children=[[["c", None], None]],
    )
    assert meta["result"] == {
        "exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins",
    }
    assert (meta["group_id"], meta["parent_id"], meta["traceback"]) == ("g", "p", "Traceback...")
    assert meta["children"] == [[["c", None], None]]


def test_extended_fields_are_added() -> None:
    extended = {"name": "tasks.add", "args": [1, 2], "kwargs": {}, "worker": "w@h", "retries": 0,
                "queue": "celery"}
    meta = make_meta("t1", states.SUCCESS, 3, extended=extended)
    assert {k: meta[k] for k in extended} == extended


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (("", states.SUCCESS), {}, "task_id"),
        (("t", ""), {}, "status"),
        (("t", states.SUCCESS), {"extended": {"status": "x"}}, "override"),
    ],
)
def test_make_meta_rejects_bad_input(args: tuple, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_meta(*args, **kwargs)


# -- encoding ---------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    meta = make_meta("t1", states.SUCCESS, {"n": [1, 2.5, "x"]})
    assert decode_meta(encode_meta(meta)) == meta


def test_decode_accepts_serializer_names() -> None:
    meta = make_meta("t1", states.SUCCESS, 1)
    body = encode_meta(meta, "msgpack")
    assert decode_meta(body, "msgpack", accept=["msgpack"]) == meta


def test_decode_refuses_content_outside_accept_before_decoding() -> None:
    body = encode_meta(make_meta("t1", states.SUCCESS, 1), "msgpack")
    with pytest.raises(ContentDisallowed):
        decode_meta(body, "application/x-msgpack", accept=["json"])


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"result": 1}', b"not json"])
def test_decode_refuses_what_is_not_a_meta(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_meta(body)


def test_celery_written_meta_decodes() -> None:
    # Observed on the wire from Celery 5.6 (spec/celery-wire.md, appendix A)
    body = (
        b'{"status": "FAILURE", "result": {"exc_type": "ValueError",'
        b' "exc_message": ["bad value", 7], "exc_module": "builtins"},'
        b' "traceback": "Traceback ...", "children": [],'
        b' "date_done": "2026-11-22T13:18:19.420467+00:00", "task_id": "d9d8"}'
    )
    meta = decode_meta(body)
    exc = exception_from_meta(meta["result"])
    assert type(exc) is ValueError and exc.args == ("bad value", 7)


def test_unencodable_result_is_stored_as_a_failure_naming_the_problem() -> None:
    meta = make_meta("t1", states.SUCCESS, {1, 2}, extended={"name": "tasks.f", "args": [object()]})
    encoded = serialize_meta("t1", meta, "json")
    assert encoded.status == states.FAILURE
    stored = decode_meta(encoded.body, encoded.content_type)
    assert stored["status"] == states.FAILURE and stored["task_id"] == "t1"
    assert stored["result"]["exc_type"] == "EncodeError"
    assert "cannot be stored" in stored["result"]["exc_message"][0]
    assert stored["name"] == "tasks.f"
    assert isinstance(stored["args"], str)  # the unencodable extended field became its repr


def test_celery_reads_our_exceptions_and_we_read_celerys() -> None:
    celery = pytest.importorskip("celery")
    from celery.backends.base import Backend as CeleryBackend

    theirs = CeleryBackend(app=celery.Celery(set_as_current=False), serializer="json")
    # Ours -> Celery
    rebuilt = theirs.exception_to_python(prepare_exception(ValueError("bad", 7)))
    assert type(rebuilt) is ValueError and rebuilt.args == ("bad", 7)
    # Celery -> ours, including its repr of an unserializable argument
    marker = object()
    prepared = theirs.prepare_exception(ValueError("bad", marker))
    stored = decode_meta(encode_meta({**make_meta("t", "FAILURE"), "result": prepared}))
    ours = exception_from_meta(stored["result"])
    assert type(ours) is ValueError and ours.args == ("bad", repr(marker))
