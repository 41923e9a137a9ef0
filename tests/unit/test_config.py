"""Settings: Celery's names and defaults, typed values, and the sources they come from."""

from __future__ import annotations

import copy
import pickle
import sys
import textwrap
from datetime import timedelta

import pytest
from celery.app import defaults as celery_defaults

from celeriac._config_table import CELERIAC_ONLY
from celeriac.config import (
    DEFAULTS,
    OLD_NAMES,
    Settings,
    settings_from_env,
    settings_from_object,
)
from celeriac.exceptions import ConfigurationError

#: Where celeriac's defaults differ from Celery's on purpose (documented in celeriac.config).
CELERIAC_DEFAULTS = {
    "broker_url": "sqlite:///celeriac.db",
    "result_backend": "sqlite:///celeriac.db",
    "beat_scheduler": "celeriac.beat:PersistentScheduler",
    "worker_autoscaler": "celeriac.worker.autoscale:Autoscaler",
    "worker_consumer": "celeriac.worker.consumer:Consumer",
}


# -- the table --------------------------------------------------------------------------------


def test_every_celery_setting_is_known_with_celerys_default():
    assert set(DEFAULTS) - CELERIAC_ONLY == set(celery_defaults.DEFAULTS)
    differing = {
        k: v
        for k, v in DEFAULTS.items()
        if k not in CELERIAC_ONLY and v != celery_defaults.DEFAULTS[k]
    }
    assert differing == CELERIAC_DEFAULTS


def test_celeriac_only_settings_have_defaults_and_no_old_names():
    assert set(DEFAULTS) >= CELERIAC_ONLY
    assert not CELERIAC_ONLY & set(OLD_NAMES.values())
    assert Settings().worker_prefetch_burst == 0.05


def test_old_upper_case_names_map_as_in_celery():
    assert celery_defaults._TO_NEW_KEY == OLD_NAMES


def test_the_defaults_that_matter_most():
    conf = Settings()
    assert conf.worker_pool == "prefork"
    assert conf.worker_concurrency is None
    assert conf.broker_transport_options == {}
    assert conf.accept_content == ("json",)
    assert conf.task_serializer == "json"
    assert conf.worker_prefetch_multiplier == 4
    assert conf.result_expires == timedelta(days=1)


# -- access -----------------------------------------------------------------------------------


def test_attribute_item_and_old_name_access_agree():
    conf = Settings(broker_url="memory://")
    assert conf.broker_url == conf["broker_url"] == conf["BROKER_URL"] == "memory://"
    conf.CELERY_ACKS_LATE = True
    assert conf.task_acks_late is True
    conf["CELERYD_CONCURRENCY"] = 3
    assert conf["worker_concurrency"] == 3
    assert "broker_url" in conf and "CELERY_RESULT_BACKEND" in conf and "nope" not in conf
    assert len(conf) == len(list(conf)) == len(DEFAULTS)


def test_setting_an_unknown_name_suggests_the_closest():
    conf = Settings()
    with pytest.raises(ConfigurationError, match="did you mean 'task_acks_late'") as info:
        conf.task_acks_lat = True
    assert (info.value.key, info.value.suggestion) == ("task_acks_lat", "task_acks_late")
    with pytest.raises(ConfigurationError, match="CELERY_ACKS_LATE"):
        conf["CELERY_ACKS_LAT"] = True
    with pytest.raises(ConfigurationError, match="did you mean 'broker_url'"):
        Settings(brokr_url="x")


def test_reading_an_unknown_name_fails_but_getattr_default_still_works():
    conf = Settings()
    with pytest.raises(ConfigurationError, match="broker_url"):
        conf["brokr_url"]
    with pytest.raises(AttributeError, match="did you mean 'broker_url'"):
        _ = conf.brokr_url
    assert getattr(conf, "brokr_url", "fallback") == "fallback"
    assert not hasattr(conf, "brokr_url")


def test_get_returns_default_only_for_unset_values():
    conf = Settings(task_default_priority=3)
    assert conf.get("task_default_priority", 9) == 3
    assert conf.get("task_queue_max_priority", 10) == 10
    assert conf.get("task_acks_late", True) is False
    with pytest.raises(ConfigurationError):
        conf.get("task_acks_lat")


def test_deleting_restores_the_default():
    conf = Settings(task_default_queue="other")
    del conf["task_default_queue"]
    assert conf.task_default_queue == "celery"
    assert conf.changes == {}


def test_defaults_are_not_shared_between_instances():
    first, second = Settings(), Settings()
    first.beat_schedule["tick"] = {"task": "t", "schedule": 1.0}
    first.broker_transport_options["visibility_timeout"] = 10
    assert second.beat_schedule == {} and second.broker_transport_options == {}
    assert DEFAULTS["beat_schedule"] == {}
    assert set(first.changes) == {"beat_schedule", "broker_transport_options"}


def test_private_attributes_cannot_be_set():
    with pytest.raises(AttributeError, match="_data"):
        Settings()._data = {}


# -- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "given", "stored"),
    [
        ("task_acks_late", "yes", True),
        ("task_acks_late", "Off", False),
        ("task_acks_late", 1, True),
        ("worker_prefetch_multiplier", "8", 8),
        ("worker_prefetch_multiplier", 8.0, 8),
        ("task_time_limit", "2.5", 2.5),
        ("task_time_limit", 30, 30),
        ("result_expires", timedelta(hours=1), timedelta(hours=1)),
        ("result_expires", "3600", 3600.0),
        ("accept_content", "json, msgpack", ["json", "msgpack"]),
        ("accept_content", {"msgpack", "json"}, ["json", "msgpack"]),
        ("accept_content", ("json",), ("json",)),
        ("imports", "proj.tasks", ["proj.tasks"]),
        ("broker_transport_options", {"visibility_timeout": 5}, {"visibility_timeout": 5}),
        ("task_time_limit", None, None),
        ("task_routes", object, object),
    ],
)
def test_typed_values_are_coerced(key, given, stored):
    conf = Settings()
    conf[key] = given
    assert conf[key] == stored
    assert type(conf[key]) is type(stored)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("task_acks_late", "maybe", "a boolean"),
        ("task_acks_late", 2, "a boolean"),
        ("worker_prefetch_multiplier", "four", "an integer"),
        ("worker_prefetch_multiplier", True, "an integer"),
        ("worker_prefetch_multiplier", 2.5, "an integer"),
        ("task_time_limit", "soon", "a number of seconds"),
        ("result_expires", [1], "or a timedelta"),
        ("accept_content", 5, "a list"),
        ("broker_transport_options", ["a"], "a mapping"),
        ("task_serializer", 1, "a string"),
    ],
)
def test_bad_values_name_the_setting_the_type_and_the_value(key, value, expected):
    with pytest.raises(ConfigurationError, match=expected) as info:
        Settings()[key] = value
    assert key in str(info.value) and repr(value) in str(info.value)
    assert info.value.key == key


def test_update_is_all_or_nothing():
    conf = Settings()
    with pytest.raises(ConfigurationError, match="worker_concurrency"):
        conf.update({"broker_url": "memory://", "worker_concurrency": "many"})
    assert conf.broker_url == DEFAULTS["broker_url"]


def test_update_refuses_two_spellings_with_different_values():
    with pytest.raises(ConfigurationError, match="given twice"):
        Settings().update({"BROKER_URL": "memory://a"}, broker_url="memory://b")
    conf = Settings()
    conf.update({"BROKER_URL": "memory://a"}, broker_url="memory://a")
    assert conf.broker_url == "memory://a"


def test_update_accepts_pairs_and_keywords():
    conf = Settings()
    conf.update([("task_default_queue", "q")], task_acks_late=True)
    assert (conf.task_default_queue, conf.task_acks_late) == ("q", True)


def test_setdefault_keeps_explicit_values():
    conf = Settings(task_default_queue="mine")
    assert conf.setdefault("task_default_queue", "theirs") == "mine"
    assert conf.setdefault("task_default_exchange", "ex") == "ex"
    conf.worker_prefetch_multiplier = 4  # explicitly set to the default value
    assert conf.setdefault("worker_prefetch_multiplier", 1) == 4
    assert conf.is_set("worker_prefetch_multiplier") and not conf.is_set("task_acks_late")


def test_changes_lists_only_non_default_values():
    conf = Settings(task_acks_late=True, worker_prefetch_multiplier=4)
    assert conf.changes == {"task_acks_late": True}


# -- display ----------------------------------------------------------------------------------


def test_humanize_masks_passwords_and_secret_keys():
    conf = Settings(
        broker_url="redis://user:hunter2@host:6379/0;redis://user:hunter2@other:6379/0",
        result_backend="redis://:hunter2@host/1",
        broker_transport_options={"sentinel_kwargs": {"password": "hunter2"}, "db": 1},
        s3_secret_access_key="hunter2",
        task_default_routing_key="visible",
    )
    text = conf.humanize()
    assert "hunter2" not in text and "hunter2" not in repr(conf)
    assert "redis://user:**@host:6379/0;redis://user:**@other:6379/0" in text
    assert "task_default_routing_key: 'visible'" in text
    assert "'db': 1" in text
    assert "hunter2" in conf.humanize(mask=False)


def test_humanize_shows_defaults_only_when_asked():
    conf = Settings(task_acks_late=True)
    assert conf.humanize() == "task_acks_late: True"
    full = conf.humanize(with_defaults=True)
    assert "worker_prefetch_multiplier: 4" in full and len(full.splitlines()) == len(DEFAULTS)
    assert repr(Settings()) == "<Settings (defaults)>"


def test_settings_survive_pickle_and_copy():
    conf = Settings(task_acks_late=True, beat_schedule={"a": {"task": "t", "schedule": 5}})
    for clone in (pickle.loads(pickle.dumps(conf)), copy.deepcopy(conf), conf.copy()):
        assert clone.changes == conf.changes and clone.is_set("task_acks_late")
    conf.copy().beat_schedule["b"] = {}
    assert "b" not in conf.beat_schedule


def test_environment_is_not_read_by_settings(monkeypatch):
    monkeypatch.setenv("CELERIAC_BROKER_URL", "memory://from-env")
    assert Settings().broker_url == DEFAULTS["broker_url"]


# -- settings_from_object ---------------------------------------------------------------------


@pytest.fixture
def config_module(tmp_path, monkeypatch):
    package = tmp_path / "cfgpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celeryconfig.py").write_text(
        textwrap.dedent(
            """
            import os
            from datetime import timedelta

            broker_url = "memory://"
            task_acks_late = True
            CELERYD_PREFETCH_MULTIPLIER = 2
            result_expires = timedelta(hours=2)
            DEBUG = True
            helper_value = 3

            def task_router(name, args, kwargs, options, task=None, **kw):
                return None

            class Production:
                broker_url = "redis://prod"
                worker_concurrency = 8
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cfgpkg.celeryconfig"
    for name in [n for n in sys.modules if n.startswith("cfgpkg")]:
        del sys.modules[name]


def test_from_module_path_takes_settings_and_ignores_the_rest(config_module):
    found = settings_from_object(config_module)
    assert found == {
        "broker_url": "memory://",
        "task_acks_late": True,
        "worker_prefetch_multiplier": 2,
        "result_expires": timedelta(hours=2),
    }
    conf = Settings()
    conf.update(found)
    assert conf.worker_prefetch_multiplier == 2


@pytest.mark.parametrize("suffix", [":Production", ".Production"])
def test_from_class_inside_a_module(config_module, suffix):
    assert settings_from_object(config_module + suffix) == {
        "broker_url": "redis://prod",
        "worker_concurrency": 8,
    }


def test_from_instance_and_module_object(config_module):
    import importlib

    module = importlib.import_module(config_module)
    assert settings_from_object(module.Production()) == {
        "broker_url": "redis://prod",
        "worker_concurrency": 8,
    }
    assert settings_from_object(module)["task_acks_late"] is True


def test_from_dict_every_key_must_be_a_setting():
    assert settings_from_object({"BROKER_URL": "x", "task_acks_late": 1}) == {
        "broker_url": "x",
        "task_acks_late": 1,
    }
    with pytest.raises(ConfigurationError, match="did you mean 'task_acks_late'"):
        settings_from_object({"task_acks_lat": True})


def test_typo_in_a_config_class_is_an_error():
    class Config:
        worker_prefetch_multiplir = 1

    with pytest.raises(ConfigurationError, match="did you mean 'worker_prefetch_multiplier'"):
        settings_from_object(Config)


def test_namespace_maps_django_style_names():
    class DjangoSettings:
        DEBUG = True
        INSTALLED_APPS = ["app"]
        CELERY_BROKER_URL = "redis://django"
        CELERY_TASK_ALWAYS_EAGER = True
        CELERY_RESULT_BACKEND = "redis://results"

    assert settings_from_object(DjangoSettings, namespace="CELERY") == {
        "broker_url": "redis://django",
        "task_always_eager": True,
        "result_backend": "redis://results",
    }

    class Typo:
        CELERY_BROKER_ULR = "x"

    with pytest.raises(ConfigurationError, match="CELERY_BROKER_URL"):
        settings_from_object(Typo, namespace="CELERY")


def test_missing_config_module_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="no_such_config_module"):
        settings_from_object("no_such_config_module")
    with pytest.raises(ConfigurationError, match="has no 'Missing'"):
        settings_from_object("celeriac.config:Missing")


def test_config_module_that_fails_to_import_shows_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "brokencfg.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        settings_from_object("brokencfg")


# -- settings_from_env ------------------------------------------------------------------------


def test_env_values_are_json_when_they_parse():
    found = settings_from_env(
        {
            "CELERIAC_BROKER_URL": "redis://localhost:6379/0",
            "CELERIAC_WORKER_CONCURRENCY": "4",
            "CELERIAC_TASK_ACKS_LATE": "true",
            "CELERIAC_ACCEPT_CONTENT": '["json", "msgpack"]',
            "CELERIAC_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 60}',
            "CELERIAC_TASK_DEFAULT_QUEUE": "123",
            "CELERIAC_APP": "proj.app",
            "PATH": "/usr/bin",
        }
    )
    assert found == {
        "broker_url": "redis://localhost:6379/0",
        "worker_concurrency": 4,
        "task_acks_late": True,
        "accept_content": ["json", "msgpack"],
        "broker_transport_options": {"visibility_timeout": 60},
        "task_default_queue": "123",
    }


def test_env_with_another_prefix():
    assert settings_from_env({"MYAPP_TASK_ACKS_LATE": "1"}, prefix="MYAPP_") == {
        "task_acks_late": True
    }


def test_unknown_env_name_suggests_the_variable():
    with pytest.raises(ConfigurationError, match="CELERIAC_BROKER_URL") as info:
        settings_from_env({"CELERIAC_BROKR_URL": "x"})
    assert info.value.suggestion == "broker_url"


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigurationError, match=r"CELERIAC_WORKER_CONCURRENCY.*'lots'"):
        settings_from_env({"CELERIAC_WORKER_CONCURRENCY": "lots"})
