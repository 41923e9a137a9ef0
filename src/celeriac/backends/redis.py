"""``redis://`` and ``rediss://``: results in Redis, in Celery's exact layout.

Celery clients and workers read and write the same keys: the meta of a task is the string
``celery-task-meta-<id>`` holding the JSON Celery writes (built by :mod:`.meta`), set
with ``SETEX`` for ``result_expires`` (plain ``SET`` when results never expire) and
published on the channel of the same name (spec/celery-wire.md section 3). A
``global_keyprefix`` in ``result_backend_transport_options`` prefixes keys and channels
with Celery's underscore rule.

Writes: :meth:`RedisBackend.store_many` sends a whole batch as one Lua script call, one
round trip. The script applies the ready-state guard to each item atomically (Celery reads
then writes, so two writers can race; here they cannot), then sets and publishes it.

Reads: ``MGET``; missing keys read as PENDING. Stored bytes are checked against the
backend's accept list before they are decoded.

Waiting: every :meth:`RedisBackend.wait_for` of one backend shares one pub/sub connection
(:class:`~._redis_subscriber.ResultSubscriber`); a waiter subscribes to its key's
channel, then reads the key (a write that landed before the subscription is found there),
then sleeps until a message on the channel wakes it. Reads of waiters that start together
are sent as one ``MGET``. After the subscription reconnects, every waited key is read
again, so nothing published during the outage is missed.

Expiry is Redis's own, so :meth:`RedisBackend.cleanup` has nothing to delete.

Transport options (``result_backend_transport_options``): ``global_keyprefix``,
``result_chord_ordered`` (True), ``health_check_interval`` (s, 25: PING a silent
subscription), ``max_connections`` (10 command connections; callers queue for one),
``socket_timeout`` (s, 120), ``socket_connect_timeout`` (s, 10), ``socket_keepalive``,
``client_name``, ``username``, ``password``, and for ``rediss://`` ``ssl_cert_reqs``
(``required`` unless told), ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``. Any
other key is an error naming the closest known one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from redis import asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from .. import serialization, states
from ..exceptions import (
    ConfigurationError,
    ConnectionClosedError,
    DecodeError,
    EncodeError,
    ResultTimeoutError,
)
from ..messaging.transports._redis_common import CONNECTION_ERRORS
from ..messaging.transports._redis_link import Link, plain_options
from ..messaging.transports.base import mask_url
from ._redis_subscriber import ResultSubscriber
from ._redis_support import (
    GROUP_KEYPREFIX,
    MAX_VALUE_SIZE,
    STORE_LUA,
    TASK_KEYPREFIX,
    RedisOptions,
    expiry_args,
    map_errors,
    sniff_content_type,
)
from ._redis_waiter import FALLBACK, SyncWaiter
from .base import Backend, Meta, pending_meta
from .meta import EncodedMeta, decode_meta, make_meta, serialize_meta

__all__ = ["RedisBackend", "ChordCounters"]

#: Items per Lua call; a larger batch is split into several calls in one pipeline.
_STORE_CHUNK = 1000
#: Keys per MGET.
_READ_CHUNK = 5000
#: How a broken fast connection fails; the call is then made again through redis-py (a
#: store and a read may safely run twice).
_LINK_BROKE = (redis_errors.ConnectionError, redis_errors.TimeoutError)
#: Seconds before a link that could not be opened again is tried again.
_LINK_RETRY = 1.0


class ChordCounters(NamedTuple):
    """The Redis bookkeeping of a chord header (``celery-taskset-meta-<gid>.j/.t/.s``)."""

    #: Header results recorded so far (members of ``.j``).
    ready: int
    #: The chord size from ``.s`` (None: not set yet).
    size: int | None
    #: Tasks added to the chord while it ran (``.t``).
    extra: int


async def _unchanged(reply: Any) -> Any:
    return reply


class _Waiter:
    """One :meth:`RedisBackend.wait_for` call: the latest payload published for its key."""

    __slots__ = ("data", "error", "event")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class RedisBackend(Backend):
    """Results in Redis, readable and writable by Celery (see the module docstring)."""

    schemes = ("redis", "rediss")
    expires_natively = True
    #: Largest meta, in bytes, Redis will hold; a larger one is stored as a FAILURE.
    max_value_size: int = MAX_VALUE_SIZE

    def __init__(self, url: str = "redis://localhost:6379/0", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._where = mask_url(url)
        self._settings = RedisOptions.parse(self.options)
        self._url_kwargs = self._check_url(url)
        serialization.codec_for(self.serializer)  # an unknown serializer fails here
        prefix = self._settings.global_keyprefix
        self._task_prefix = (prefix + TASK_KEYPREFIX).encode()
        self._group_prefix = (prefix + GROUP_KEYPREFIX).encode()
        self._expiry = expiry_args(self.expires)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: aioredis.BlockingConnectionPool | None = None
        self._client: aioredis.Redis | None = None
        self._store_sha: str | None = None
        #: Writes and reads of single batches go over this where redis-py is not needed
        #: (see ``messaging.transports._redis_link``); redis-py's pool takes the rest.
        self._link: Link | None = None
        self._link_opening = False
        self._link_retry_at = 0.0
        options = {**self._url_kwargs, **(self._settings.connection or {})}
        options.setdefault("host", "localhost")
        options.setdefault("port", 6379)
        self._link_options = options if plain_options(options) else None
        self._waiter = (
            None
            if self._link_options is None
            else SyncWaiter(
                options,
                self._db,
                self._settings.health_check_interval,
                self._settings.max_connections,
            )
        )
        self._subscriber: ResultSubscriber | None = None
        self._waiters: dict[bytes, set[_Waiter]] = {}
        self._reads: dict[bytes, list[asyncio.Future[bytes | None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    def _check_url(self, url: str) -> dict[str, Any]:
        try:
            parsed: dict[str, Any] = dict(parse_url(url))
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"bad Redis result backend URL {self._where!r}: {exc} (expected "
                "redis://[:password@]host[:port][/db] or rediss://...)",
                key="result_backend",
            ) from None
        conn = self._settings.connection or {}
        if any(k.startswith("ssl_") for k in conn) and not url.startswith("rediss:"):
            raise ConfigurationError(
                "ssl_* result_backend_transport_options need a rediss:// URL, got "
                f"{self._where!r}",
                key="result_backend",
            )
        return parsed

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection pool and check that Redis answers (and takes the password).

        Raises:
            ConnectionBrokenError: Redis cannot be reached.
            ConfigurationError: Redis refused the credentials.
        """
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._closed = False
        kwargs: dict[str, Any] = dict(self._settings.connection or {})
        kwargs["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), 2)
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=self._settings.max_connections, **kwargs
        )
        client = aioredis.Redis(connection_pool=pool)
        try:
            with map_errors(self._where):
                await client.ping()
                self._store_sha = await client.script_load(STORE_LUA)
        except BaseException:
            await client.aclose()
            await pool.disconnect()
            raise
        self._pool, self._client = pool, client

    async def close(self) -> None:
        """Close every connection; waiting calls fail with ConnectionClosedError."""
        self._closed = True
        error = ConnectionClosedError(f"{self!r} was closed while waiting")
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.error = error
                waiter.event.set()
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            await subscriber.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        for futs in self._reads.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(error)
        self._reads.clear()
        client, pool = self._client, self._pool
        self._client = self._pool = None
        link, self._link = self._link, None
        if link is not None:
            link.close()
        if self._waiter is not None:
            self._waiter.close()
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.disconnect()

    @property
    def _db(self) -> int:
        return int(self._url_kwargs.get("db") or 0)

    async def _fast(self) -> Link | None:
        """The single-batch connection, opened on first use and again after it broke;
        None means "use redis-py" (no link for these options, or none right now:
        redis-py's pool, with its retries, then says what is wrong, and the link is
        tried again a second later)."""
        link = self._link
        if link is not None and not link.closed:
            return link
        options, client = self._link_options, self._client
        if (
            options is None
            or client is None
            or self._link_opening
            or time.monotonic() < self._link_retry_at
        ):
            return None
        self._link = None
        self._link_opening = True  # one caller reopens; the others take redis-py meanwhile
        try:
            link = await Link.open(options, self._db)
        except Exception:
            self._link_retry_at = time.monotonic() + _LINK_RETRY
            return None
        finally:
            self._link_opening = False
        if self._client is not client or self._link is not None:
            link.close()  # closed or connected again while this one opened
            return self._link
        self._link = link
        return link

    def _require(self) -> aioredis.Redis:
        client = self._client
        if client is None:
            state = "closed" if self._closed else "not connected (call connect() first)"
            raise ConnectionClosedError(f"{self!r} is {state}")
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                f"{self!r} was connected on another event loop; use one backend per loop "
                "(app.get_backend() keeps one for each)"
            )
        return client

    # -- keys ---------------------------------------------------------------------------

    def _task_key(self, task_id: str) -> bytes:
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"task_id must be a non-empty string, got {task_id!r}")
        return self._task_prefix + task_id.encode()

    def _group_key(self, group_id: str, suffix: str = "") -> bytes:
        if not isinstance(group_id, str) or not group_id:
            raise ValueError(f"group_id must be a non-empty string, got {group_id!r}")
        return self._group_prefix + group_id.encode() + suffix.encode()

    # -- writes -------------------------------------------------------------------------

    async def store_many(self, items: Sequence[tuple[str, Meta]]) -> None:
        """Store metas in one round trip (see the module docstring).

        A meta the serializer cannot encode, or one larger than :attr:`max_value_size`,
        is stored as a FAILURE that says why, so its caller is not left waiting.
        """
        client = self._require()
        if not items:
            return
        keys: list[bytes] = []
        values: list[Any] = []
        for task_id, meta in items:
            key = self._task_key(task_id)
            encoded = serialize_meta(task_id, meta, self.serializer)
            if len(encoded.body) > self.max_value_size:
                encoded = self._too_large(task_id, meta, encoded)
            keys.append(key)
            values += (encoded.status, encoded.body)
        with map_errors(self._where):
            await self._run_store(client, keys, values)

    def _too_large(self, task_id: str, meta: Meta, encoded: EncodedMeta) -> EncodedMeta:
        error = EncodeError(
            f"the {encoded.status} result of task {task_id} is {len(encoded.body)} bytes "
            f"encoded, over the {self.max_value_size}-byte limit of a Redis value"
        )
        failure = make_meta(
            task_id,
            states.FAILURE,
            error,
            None,
            group_id=meta.get("group_id"),
            parent_id=meta.get("parent_id"),
        )
        return serialize_meta(task_id, failure, self.serializer)

    async def _run_store(
        self, client: aioredis.Redis, keys: list[bytes], values: list[Any]
    ) -> None:
        mode, amount = self._expiry
        sha = self._store_sha or ""
        chunks = [
            (keys[i : i + _STORE_CHUNK], values[2 * i : 2 * (i + _STORE_CHUNK)])
            for i in range(0, len(keys), _STORE_CHUNK)
        ]
        if len(chunks) == 1:
            ks, vs = chunks[0]
            link = await self._fast()
            if link is not None:
                with contextlib.suppress(*_LINK_BROKE):  # redis-py's pool takes it over
                    await link.evalsha(sha, STORE_LUA, ks, [mode, amount, *vs])
                    return
            try:
                await client.evalsha(sha, len(ks), *ks, mode, amount, *vs)
            except redis_errors.NoScriptError:  # Redis restarted: the script cache is empty
                await client.eval(STORE_LUA, len(ks), *ks, mode, amount, *vs)
            return
        async with client.pipeline(transaction=False) as pipe:
            for ks, vs in chunks:
                pipe.evalsha(sha, len(ks), *ks, mode, amount, *vs)
            results = await pipe.execute(raise_on_error=False)
        for (ks, vs), result in zip(chunks, results, strict=True):
            if isinstance(result, redis_errors.NoScriptError):
                await client.eval(STORE_LUA, len(ks), *ks, mode, amount, *vs)
            elif isinstance(result, Exception):
                raise result

    async def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the results (they read as PENDING afterwards)."""
        client = self._require()
        keys = [self._task_key(tid) for tid in task_ids]
        if keys:
            with map_errors(self._where):
                await client.delete(*keys)

    async def cleanup(self) -> int:
        """Nothing to do: Redis deletes expired keys itself. Returns 0."""
        self._require()
        return 0

    # -- reads --------------------------------------------------------------------------

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        client = self._require()
        ids = list(task_ids)
        if not ids:
            return {}
        keys = [self._task_key(tid) for tid in ids]
        with map_errors(self._where):
            raw = await self._mget(client, keys)
        return {tid: self._decode(tid, value) for tid, value in zip(ids, raw, strict=True)}

    async def _mget(self, client: aioredis.Redis, keys: list[bytes]) -> list[bytes | None]:
        if len(keys) <= _READ_CHUNK:
            link = await self._fast()
            if link is not None:
                with contextlib.suppress(*_LINK_BROKE):  # redis-py's pool takes it over
                    return cast(list[bytes | None], await link.call("MGET", *keys))
            return cast(list[bytes | None], await client.mget(keys))
        async with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(keys), _READ_CHUNK):
                pipe.mget(keys[start : start + _READ_CHUNK])
            parts = await pipe.execute()
        return [value for part in parts for value in part]

    def _decode(self, task_id: str, raw: bytes | None) -> Meta:
        if raw is None:
            return pending_meta(task_id)
        content_type, content_encoding = sniff_content_type(raw, self.serializer)
        return decode_meta(raw, content_type, self.accept, content_encoding)

    def _read_soon(self, key: bytes) -> asyncio.Future[bytes | None]:
        """Read ``key`` in the next batched MGET (waiters that start together share one)."""
        assert self._loop is not None
        fut: asyncio.Future[bytes | None] = self._loop.create_future()
        self._reads.setdefault(key, []).append(fut)
        if self._reader is None or self._reader.done():
            self._reader = self._loop.create_task(self._read_batches())
        return fut

    async def _read_batches(self) -> None:
        while self._reads and self._client is not None:
            batch, self._reads = self._reads, {}
            keys = list(batch)
            try:
                with map_errors(self._where):
                    values = await self._mget(self._client, keys)
            except Exception as exc:
                for futs in batch.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(exc)
                continue
            for key, value in zip(keys, values, strict=True):
                for fut in batch[key]:
                    if not fut.done():
                        fut.set_result(value)

    # -- waiting ------------------------------------------------------------------------

    def wait_sync(self, task_id: str, timeout: float | None) -> Meta | None:
        """Wait over a blocking RESP3 connection (see :mod:`._redis_waiter`)."""
        waiter = self._waiter
        if waiter is None or self._client is None:
            return None
        key = self._task_key(task_id)

        def decode(raw: bytes | None) -> tuple[Meta, bool]:
            meta = self._decode(task_id, raw)
            return meta, meta.get("status") in states.READY_STATES

        meta = waiter.wait(key, timeout, decode)
        return None if meta is FALLBACK else cast(Meta, meta)

    async def wait_for(self, task_id: str, timeout: float | None) -> Meta:
        """Return the meta once it is ready, woken by the write's PUBLISH.

        Raises:
            ResultTimeoutError: Not ready within ``timeout`` seconds (0: one read).
            ConnectionClosedError: The backend was closed while waiting.
            ConnectionBrokenError: Redis could not be read.
        """
        self._require()
        key = self._task_key(task_id)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(timeout, 0.0)
        subscriber = self._ensure_subscriber()
        waiter = _Waiter()
        self._waiters.setdefault(key, set()).add(waiter)
        subscribed = subscriber.acquire(key)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await subscribed
            meta = self._decode(task_id, await self._read_soon(key))
            while meta.get("status") not in states.READY_STATES:
                if deadline is not None and loop.time() >= deadline:
                    raise ResultTimeoutError(
                        f"task {task_id} was not ready within {timeout}s "
                        f"(last state {meta.get('status')}); it may still complete"
                    )
                try:
                    async with asyncio.timeout_at(deadline):
                        await waiter.event.wait()
                except TimeoutError:
                    # One last read before giving up: the deadline check above raises.
                    meta = self._decode(task_id, await self._read_soon(key))
                    continue
                waiter.event.clear()
                if waiter.error is not None:
                    raise waiter.error
                data, waiter.data = waiter.data, None
                if data is not None:
                    meta = self._decode(task_id, data)
            return meta
        finally:
            subscriber.release(key)
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]

    def _ensure_subscriber(self) -> ResultSubscriber:
        if self._subscriber is None:
            self._subscriber = ResultSubscriber(
                self._open_subscription,
                self._on_published,
                self._on_resubscribed,
                errors=CONNECTION_ERRORS,
                health_check_interval=self._settings.health_check_interval,
                name=self._where,
            )
        return self._subscriber

    async def _open_subscription(self) -> Any:
        pool = self._pool
        if pool is None:
            raise ConnectionClosedError(f"{self!r} is closed")
        kwargs = dict(pool.connection_kwargs)
        # Reads on a subscription wait for as long as nobody publishes; a dead peer is
        # found by the subscriber's own PING instead of a socket timeout.
        kwargs.update(socket_timeout=None, retry=Retry(NoBackoff(), 0), health_check_interval=0)
        conn: Any = pool.connection_class(**kwargs)
        await conn.connect()
        # redis-py's parser hands pub/sub replies to a handler that formats each one
        # for a debug log line, whatever the log level; hand them back unchanged.
        set_handler = getattr(getattr(conn, "_parser", None), "set_pubsub_push_handler", None)
        if set_handler is not None:
            set_handler(_unchanged)
        return conn

    def _on_published(self, channel: bytes, data: bytes) -> None:
        for waiter in self._waiters.get(channel, ()):
            waiter.data = data
            waiter.event.set()

    async def _on_resubscribed(self, channels: list[bytes]) -> None:
        """After a reconnection: read every waited key, publishes may have been missed."""
        client = self._client
        if client is None or not channels:
            return
        values = await self._mget(client, channels)
        for channel, value in zip(channels, values, strict=True):
            if value is not None:
                self._on_published(channel, value)

    # -- groups and chords (Celery's keys; the chord protocol itself is canvas work) ----

    async def save_group(self, group_id: str, result: Any) -> None:
        """Store ``{"result": result}`` (a GroupResult tuple) as Celery's ``.save()`` does."""
        client = self._require()
        key = self._group_key(group_id)
        body = serialization.dumps({"result": result}, self.serializer)[2]
        mode, amount = self._expiry
        with map_errors(self._where):
            async with client.pipeline(transaction=True) as pipe:
                if mode == "EX":
                    pipe.set(key, body, ex=int(amount))
                elif mode == "PX":
                    pipe.set(key, body, px=int(amount))
                else:
                    pipe.set(key, body)
                pipe.publish(key, body)
                await pipe.execute()

    async def get_group(self, group_id: str) -> dict[str, Any] | None:
        """The stored ``celery-taskset-meta-<gid>`` value (``{"result": ...}``), or None."""
        client = self._require()
        with map_errors(self._where):
            raw = cast(bytes | None, await client.get(self._group_key(group_id)))
        if raw is None:
            return None
        ctype, cenc = sniff_content_type(raw, self.serializer)
        value = serialization.loads(raw, ctype, cenc, self.accept)
        if not isinstance(value, dict) or "result" not in value:
            raise DecodeError(
                f"group {group_id} meta is not a mapping with 'result': {value!r}"[:500],
                body=raw,
                content_type=ctype,
            )
        return value

    async def forget_group(self, group_id: str) -> None:
        """Delete a saved group and its chord bookkeeping keys."""
        client = self._require()
        keys = [self._group_key(group_id, s) for s in ("", ".j", ".t", ".s", ".d", ".c")]
        with map_errors(self._where):
            await client.delete(*keys)

    async def chord_counters(self, group_id: str) -> ChordCounters:
        """How far a chord header got, read from Celery's ``.j``/``.t``/``.s`` keys."""
        client = self._require()
        jkey = self._group_key(group_id, ".j")
        with map_errors(self._where):
            async with client.pipeline(transaction=False) as pipe:
                if self._settings.result_chord_ordered:
                    pipe.zcard(jkey)
                else:
                    pipe.llen(jkey)
                pipe.get(self._group_key(group_id, ".s"))
                pipe.get(self._group_key(group_id, ".t"))
                ready, size, extra = await pipe.execute()
        return ChordCounters(int(ready), None if size is None else int(size), int(extra or 0))
