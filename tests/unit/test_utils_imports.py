"""symbol_by_name and find_app (the -A rules), on throwaway modules in a temp directory."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.utils.imports import AppNotFound, SymbolNotFound, find_app, symbol_by_name


class App:
    """The app type find_app looks for."""

    def __init__(self, name: str) -> None:
        self.name = name


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty project directory as cwd; modules written there are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(root: Path, relpath: str, source: str) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


APP_SOURCE = f"from {__name__} import App\n"


# --- symbol_by_name -------------------------------------------------------------------------


def test_symbol_by_name_accepts_colon_and_dot_forms() -> None:
    import os.path

    assert symbol_by_name("os.path:join") is os.path.join
    assert symbol_by_name("os.path.join") is os.path.join
    assert symbol_by_name("collections:OrderedDict.fromkeys") is not None
    assert symbol_by_name("os") is sys.modules["os"]
    assert symbol_by_name(App) is App  # non-strings pass through


def test_symbol_by_name_resolves_relative_names_against_a_package() -> None:
    from celeriac.utils import time as utils_time

    assert symbol_by_name(".time:now_utc", package="celeriac.utils") is utils_time.now_utc


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_mod_q:thing", "no module named 'no_such_mod_q'"),
        ("os.path:no_such_attr", "'os.path' has no attribute 'no_such_attr'"),
        ("os.no_such_attr", "'os' has no attribute 'no_such_attr'"),
        ("os:", "malformed name"),
        (":x", "malformed name"),
        ("", "malformed name"),
        (" os", "malformed name"),
        (".rel:x", "cannot import '.rel:x'"),
    ],
)
def test_symbol_by_name_errors_say_what_failed(name: str, message: str) -> None:
    with pytest.raises(SymbolNotFound, match=message) as info:
        symbol_by_name(name)
    assert isinstance(info.value, ImportError)


def test_an_import_error_inside_the_module_is_not_reported_as_missing(project: Path) -> None:
    write(project, "brokenmod.py", "import no_such_dependency_q\nx = 1\n")
    sys.path.insert(0, str(project))
    with pytest.raises(ModuleNotFoundError) as info:
        symbol_by_name("brokenmod:x")
    assert not isinstance(info.value, SymbolNotFound)
    assert info.value.name == "no_such_dependency_q"


# --- find_app ---------------------------------------------------------------------------------


def test_find_app_module_colon_attr(project: Path) -> None:
    write(project, "proj1.py", APP_SOURCE + "main = App('main')\n")
    assert find_app("proj1:main", App).name == "main"  # type: ignore[attr-defined]
    assert str(project) in sys.path  # the current directory became importable


def test_find_app_prefers_app_then_celery_attributes(project: Path) -> None:
    write(project, "proj2.py", APP_SOURCE + "celery = App('c')\napp = App('a')\n")
    write(project, "proj3.py", APP_SOURCE + "celery = App('c')\nother = App('o')\n")
    assert find_app("proj2", App).name == "a"  # type: ignore[attr-defined]
    assert find_app("proj3", App).name == "c"  # type: ignore[attr-defined]


def test_find_app_dotted_attribute_and_dotted_submodule(project: Path) -> None:
    write(project, "pkg4/__init__.py", "")
    write(project, "pkg4/tasks.py", APP_SOURCE + "app = App('tasks')\n")
    # pkg4/__init__ does not import tasks: "pkg4.tasks" is then imported as a module
    assert find_app("pkg4.tasks", App).name == "tasks"  # type: ignore[attr-defined]
    assert find_app("pkg4.tasks.app", App).name == "tasks"  # type: ignore[attr-defined]


def test_find_app_looks_in_the_packages_celery_submodule(project: Path) -> None:
    # The Django layout: proj/celery.py holds the app, proj/__init__ imports the module
    write(project, "proj5/__init__.py", "from . import celery as _celery  # noqa\n")
    write(project, "proj5/celery.py", APP_SOURCE + "app = App('django-style')\n")
    assert find_app("proj5", App).name == "django-style"  # type: ignore[attr-defined]


def test_find_app_falls_back_to_the_single_instance(project: Path) -> None:
    write(project, "proj6.py", APP_SOURCE + "my_queue_app = App('only')\nalias = my_queue_app\n")
    assert find_app("proj6", App).name == "only"  # type: ignore[attr-defined]


def test_find_app_refuses_to_guess_between_several_instances(project: Path) -> None:
    write(project, "proj7.py", APP_SOURCE + "one = App('1')\ntwo = App('2')\n")
    with pytest.raises(AppNotFound, match=r"several App instances \(one, two\).*'proj7:<attr>'"):
        find_app("proj7", App)


def test_find_app_lists_what_it_tried(project: Path) -> None:
    write(project, "proj8/__init__.py", "x = 1\n")
    with pytest.raises(AppNotFound) as info:
        find_app("proj8", App)
    message = str(info.value)
    for tried in ("proj8.app", "proj8.celery", "module proj8.celery", "an instance of App"):
        assert tried in message
    assert isinstance(info.value, ImportError)


def test_find_app_does_not_call_factories(project: Path) -> None:
    write(project, "proj9.py", APP_SOURCE + "def create_app():\n    return App('made')\n")
    with pytest.raises(AppNotFound, match="factories are not called"):
        find_app("proj9:create_app", App)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_proj_q", "cannot load app 'no_such_proj_q': .*no module named"),
        ("no_such_proj_q:app", "cannot load app 'no_such_proj_q:app'"),
        ("", "empty app spec"),
    ],
)
def test_find_app_missing_module(project: Path, spec: str, message: str) -> None:
    with pytest.raises(AppNotFound, match=message):
        find_app(spec, App)


def test_find_app_lets_the_users_own_import_error_through(project: Path) -> None:
    write(project, "proj10.py", "import no_such_dependency_q\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_q"):
        find_app("proj10", App)
