"""Every setting celeriac knows: name, default, value type and pre-4.0 upper-case name.

The names and defaults are Celery 5's (``celery/app/defaults.py``), so a Celery
configuration module works unchanged. Deliberate differences, all in :data:`OVERRIDES`:
``broker_url`` and ``result_backend`` default to the embedded SQLite file, and the settings
that name implementation classes point at celeriac's.

Value types (checked and coerced by :mod:`celeriac.config`): ``bool``, ``int``, ``float``,
``duration`` (seconds or a ``timedelta``), ``list``, ``dict``, ``str``, and ``any``
(unchecked: URLs that may be lists, class paths that may be classes, and so on).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

#: One option: (default, value type, explicit old name or None).
Option = tuple[Any, str, "str | None"]

_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
_TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)

#: namespace -> (pattern for the old upper-case name or None, {key: option}).
#: A pattern ``"CELERY_{}"`` gives ``CELERY_ACKS_LATE`` for ``task_acks_late``; None means
#: the old name is the full name upper-cased (``BROKER_URL``).
NAMESPACES: dict[str, tuple[str | None, dict[str, Option]]] = {
    "": ("CELERY_{}", {
        "accept_content": (("json",), "list", None),
        "result_accept_content": (None, "list", "RESULT_ACCEPT_CONTENT"),
        "enable_utc": (True, "bool", "ENABLE_UTC"),
        "imports": ((), "list", None),
        "include": ((), "list", None),
        "timezone": (None, "any", None),
    }),
    "beat": ("CELERYBEAT_{}", {
        "enable_remote_control": (False, "bool", None),
        "remote_control_max_tick_age": (None, "float", None),
        "max_loop_interval": (0, "float", None),
        "schedule": ({}, "dict", None),
        "scheduler": ("celery.beat:PersistentScheduler", "any", None),
        "schedule_filename": ("celerybeat-schedule", "str", None),
        "sync_every": (0, "int", None),
        "cron_starting_deadline": (None, "int", None),
    }),
    "broker": (None, {
        "url": (None, "any", None),
        "read_url": (None, "any", None),
        "write_url": (None, "any", None),
        "transport": (None, "any", None),
        "transport_options": ({}, "dict", None),
        "connection_timeout": (4, "float", None),
        "connection_retry": (True, "bool", None),
        "connection_retry_on_startup": (None, "bool", None),
        "connection_max_retries": (100, "int", None),
        "channel_error_retry": (False, "bool", None),
        "failover_strategy": (None, "any", None),
        "heartbeat": (120, "int", None),
        "heartbeat_checkrate": (3.0, "float", None),
        "login_method": (None, "any", None),
        "native_delayed_delivery_queue_type": ("quorum", "str", None),
        "pool_limit": (10, "int", None),
        "pool_acquire_timeout": (None, "float", None),
        "use_ssl": (False, "any", None),
        "host": (None, "any", None),
        "port": (None, "int", None),
        "user": (None, "any", None),
        "password": (None, "any", None),
        "vhost": (None, "any", None),
    }),
    "cache": ("CELERY_CACHE_{}", {
        "backend": (None, "any", None),
        "backend_options": ({}, "dict", None),
    }),
    "cassandra": (None, {
        "entry_ttl": (None, "float", None),
        "keyspace": (None, "any", None),
        "port": (None, "any", None),
        "read_consistency": (None, "any", None),
        "servers": (None, "list", None),
        "bundle_path": (None, "any", None),
        "table": (None, "any", None),
        "write_consistency": (None, "any", None),
        "auth_provider": (None, "any", None),
        "auth_kwargs": (None, "any", None),
        "options": ({}, "dict", None),
    }),
    "s3": (None, {
        "access_key_id": (None, "any", None),
        "secret_access_key": (None, "any", None),
        "bucket": (None, "any", None),
        "base_path": (None, "any", None),
        "endpoint_url": (None, "any", None),
        "region": (None, "any", None),
    }),
    "azureblockblob": (None, {
        "container_name": ("celery", "str", None),
        "retry_initial_backoff_sec": (2, "int", None),
        "retry_increment_base": (2, "int", None),
        "retry_max_attempts": (3, "int", None),
        "base_path": ("", "str", None),
        "connection_timeout": (20, "int", None),
        "read_timeout": (120, "int", None),
    }),
    "gcs": (None, {
        "bucket": (None, "any", None),
        "project": (None, "any", None),
        "base_path": ("", "str", None),
        "ttl": (0, "float", None),
    }),
    "control": (None, {
        "queue_ttl": (300.0, "float", None),
        "queue_expires": (10.0, "float", None),
        "queue_exclusive": (True, "bool", None),
        "queue_durable": (False, "bool", None),
        "exchange": ("celery", "str", None),
    }),
    "couchbase": ("CELERY_COUCHBASE_{}", {"backend_settings": (None, "dict", None)}),
    "arangodb": ("CELERY_ARANGODB_{}", {"backend_settings": (None, "dict", None)}),
    "mongodb": ("CELERY_MONGODB_{}", {"backend_settings": (None, "dict", None)}),
    "cosmosdbsql": (None, {
        "database_name": ("celerydb", "str", None),
        "collection_name": ("celerycol", "str", None),
        "consistency_level": ("Session", "str", None),
        "max_retry_attempts": (9, "int", None),
        "max_retry_wait_time": (30, "int", None),
    }),
    "event": ("CELERY_EVENT_{}", {
        "queue_expires": (60.0, "float", None),
        "queue_ttl": (5.0, "float", None),
        "queue_prefix": ("celeryev", "str", None),
        "queue_exclusive": (True, "bool", None),
        "queue_durable": (False, "bool", None),
        "serializer": ("json", "str", None),
        "exchange": ("celeryev", "str", None),
    }),
    "redis": ("CELERY_REDIS_{}", {
        "backend_use_ssl": (None, "any", None),
        "db": (None, "int", None),
        "host": (None, "any", None),
        "max_connections": (None, "int", None),
        "username": (None, "any", None),
        "password": (None, "any", None),
        "port": (None, "int", None),
        "socket_timeout": (120.0, "float", None),
        "socket_connect_timeout": (None, "float", None),
        "retry_on_timeout": (False, "bool", None),
        "socket_keepalive": (False, "bool", None),
    }),
    "result": ("CELERY_RESULT_{}", {
        "backend": (None, "any", None),
        "cache_max": (-1, "int", "CELERY_MAX_CACHED_RESULTS"),
        "compression": (None, "str", None),
        "exchange": ("celeryresults", "str", None),
        "exchange_type": ("direct", "str", None),
        "expires": (timedelta(days=1), "duration", "CELERY_TASK_RESULT_EXPIRES"),
        "chord_expires": (None, "duration", None),
        "failure_expires": (None, "duration", None),
        "persistent": (None, "bool", None),
        "extended": (False, "bool", None),
        "serializer": ("json", "str", None),
        "backend_transport_options": ({}, "dict", None),
        "chord_retry_interval": (1.0, "float", None),
        "chord_join_timeout": (3.0, "float", None),
        "backend_max_sleep_between_retries_ms": (10000, "int", None),
        "backend_max_retries": (float("inf"), "float", None),
        "backend_base_sleep_between_retries_ms": (10, "int", None),
        "backend_always_retry": (False, "bool", None),
    }),
    "elasticsearch": ("CELERY_ELASTICSEARCH_{}", {
        "retry_on_timeout": (None, "bool", None),
        "max_retries": (None, "int", None),
        "timeout": (None, "float", None),
        "save_meta_as_text": (True, "bool", None),
    }),
    "security": ("CELERY_SECURITY_{}", {
        "certificate": (None, "any", None),
        "cert_store": (None, "any", None),
        "key": (None, "any", None),
        "key_password": (None, "any", None),
        "digest": ("sha256", "str", None),
    }),
    "database": (None, {
        "url": (None, "any", "CELERY_RESULT_DBURI"),
        "engine_options": (
            {"pool_pre_ping": True, "pool_recycle": 3600}, "dict", "CELERY_RESULT_ENGINE_OPTIONS"
        ),
        "engine_callback": (None, "any", None),
        "short_lived_sessions": (False, "bool", "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS"),
        "table_schemas": (None, "dict", None),
        "table_names": (None, "dict", "CELERY_RESULT_DB_TABLENAMES"),
        "create_tables_at_setup": (True, "bool", None),
    }),
    "task": ("CELERY_{}", {
        "acks_late": (False, "bool", None),
        "acks_on_failure_or_timeout": (True, "bool", None),
        "acks_on_failure": (None, "bool", None),
        "acks_on_timeout": (None, "bool", None),
        "always_eager": (False, "bool", None),
        "annotations": (None, "any", None),
        "compression": (None, "str", "CELERY_MESSAGE_COMPRESSION"),
        "create_missing_queues": (True, "bool", None),
        "create_missing_queue_type": ("classic", "str", None),
        "create_missing_queue_exchange_type": (None, "str", None),
        "inherit_parent_priority": (False, "bool", None),
        "default_delivery_mode": (2, "any", None),
        "default_queue": ("celery", "str", None),
        "default_queue_type": ("classic", "str", None),
        "default_exchange": (None, "str", None),
        "default_exchange_type": ("direct", "str", None),
        "default_routing_key": (None, "str", None),
        "default_rate_limit": (None, "any", None),
        "default_priority": (None, "int", None),
        "eager_propagates": (False, "bool", "CELERY_EAGER_PROPAGATES_EXCEPTIONS"),
        "ignore_result": (False, "bool", None),
        "store_eager_result": (False, "bool", None),
        "protocol": (2, "int", "CELERY_TASK_PROTOCOL"),
        "publish_retry": (True, "bool", "CELERY_TASK_PUBLISH_RETRY"),
        "publish_retry_policy": (
            {"max_retries": 3, "interval_start": 0, "interval_max": 1, "interval_step": 0.2},
            "dict",
            "CELERY_TASK_PUBLISH_RETRY_POLICY",
        ),
        "queues": (None, "any", None),
        "queue_max_priority": (None, "int", None),
        "reject_on_worker_lost": (None, "bool", None),
        "retry_on_worker_lost": (False, "bool", None),
        "remote_tracebacks": (False, "bool", None),
        "repr_maxlevels": (3, "int", None),
        "routes": (None, "any", None),
        "send_sent_event": (False, "bool", "CELERY_SEND_TASK_SENT_EVENT"),
        "serializer": ("json", "str", "CELERY_TASK_SERIALIZER"),
        "soft_time_limit": (None, "float", "CELERYD_TASK_SOFT_TIME_LIMIT"),
        "time_limit": (None, "float", "CELERYD_TASK_TIME_LIMIT"),
        "store_errors_even_if_ignored": (False, "bool", None),
        "track_started": (False, "bool", None),
        "allow_error_cb_on_chord_header": (False, "bool", None),
    }),
    "worker": ("CELERYD_{}", {
        "agent": (None, "any", None),
        "autoscaler": ("celery.worker.autoscale:Autoscaler", "any", None),
        "cancel_long_running_tasks_on_connection_loss": (False, "bool", None),
        "soft_shutdown_timeout": (0.0, "float", None),
        "enable_soft_shutdown_on_idle": (False, "bool", None),
        "concurrency": (None, "int", None),
        "consumer": ("celery.worker.consumer:Consumer", "any", None),
        "direct": (False, "bool", "CELERY_WORKER_DIRECT"),
        "disable_rate_limits": (False, "bool", "CELERY_DISABLE_RATE_LIMITS"),
        "deduplicate_successful_tasks": (False, "bool", None),
        "enable_remote_control": (True, "bool", "CELERY_ENABLE_REMOTE_CONTROL"),
        "hijack_root_logger": (True, "bool", None),
        "log_color": (None, "bool", None),
        "log_datefmt": (None, "str", None),
        "log_format": (_LOG_FORMAT, "str", None),
        "lost_wait": (10.0, "float", "CELERYD_WORKER_LOST_WAIT"),
        "max_memory_per_child": (None, "int", None),
        "max_tasks_per_child": (None, "int", None),
        "pool": ("prefork", "any", None),
        "pool_putlocks": (True, "bool", None),
        "pool_restarts": (False, "bool", None),
        "pool_start_method": ("fork", "str", None),
        "proc_alive_timeout": (4.0, "float", None),
        "prefetch_multiplier": (4, "int", None),
        "prefetch_burst": (0.05, "float", None),
        "eta_task_limit": (None, "int", None),
        "enable_prefetch_count_reduction": (True, "bool", None),
        "disable_prefetch": (False, "bool", None),
        "redirect_stdouts": (True, "bool", "CELERY_REDIRECT_STDOUTS"),
        "redirect_stdouts_level": ("WARNING", "str", "CELERY_REDIRECT_STDOUTS_LEVEL"),
        "send_task_events": (False, "bool", "CELERY_SEND_EVENTS"),
        "state_db": (None, "any", None),
        "task_log_datefmt": (None, "str", None),
        "task_log_format": (_TASK_LOG_FORMAT, "str", None),
        "timer": (None, "any", None),
        "timer_precision": (1.0, "float", None),
        "detect_quorum_queues": (True, "bool", None),
    }),
}

#: celeriac's own defaults where they differ from Celery's (see the module docstring).
OVERRIDES: dict[str, Any] = {
    "broker_url": "sqlite:///celeriac.db",
    "result_backend": "sqlite:///celeriac.db",
    "beat_scheduler": "celeriac.beat:PersistentScheduler",
    "worker_autoscaler": "celeriac.worker.autoscale:Autoscaler",
    "worker_consumer": "celeriac.worker.consumer:Consumer",
}


#: Settings celeriac adds, with no Celery counterpart (and so no old upper-case name).
CELERIAC_ONLY: frozenset[str] = frozenset({"worker_prefetch_burst"})


def flatten() -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """``(defaults, types, old_name -> new_name)`` for every setting."""
    defaults: dict[str, Any] = {}
    types: dict[str, str] = {}
    old_names: dict[str, str] = {}
    for namespace, (pattern, options) in NAMESPACES.items():
        for key, (default, kind, old) in options.items():
            name = f"{namespace}_{key}" if namespace else key
            defaults[name] = OVERRIDES.get(name, default)
            types[name] = kind
            if name in CELERIAC_ONLY:
                continue
            if old is None:
                old = pattern.format(key.upper()) if pattern else name.upper()
            old_names[old] = name
    return defaults, types, old_names
