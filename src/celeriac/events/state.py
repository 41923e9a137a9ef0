"""The cluster as seen from its events: workers, tasks, and how they relate.

:class:`State` takes events one at a time (:meth:`State.event`, usually as an
:class:`~celeriac.events.receiver.EventReceiver` handler) and keeps:

* workers and tasks in maps bounded by ``max_workers_in_memory`` and
  ``max_tasks_in_memory``, least recently updated evicted first;
* a bounded heap of task events ordered by (clock, timestamp, origin);
* the indexes ``tasks_by_type`` and ``tasks_by_worker``;
* parent/children links, whichever of the two arrives first;
* worker liveness: alive while a heartbeat (any event from it) arrived within
  ``freq * expire_window`` seconds; ``on_node_join`` / ``on_node_leave`` callbacks.

**Order does not matter.** Events reach a monitor late, twice, or out of order (several
workers, batching, reconnects). A task's final state depends only on the *set* of its
events, never on their arrival order:

* the state comes from the event with the highest rank: finished states (REVOKED <
  FAILURE < SUCCESS, Celery's precedence) outrank everything, ``task-sent`` (PENDING)
  ranks lowest, and among the rest (RECEIVED, STARTED, RETRY, REJECTED, custom states) the
  logically latest event wins, by (clock, timestamp, origin, type). So a late
  ``task-started`` never overwrites SUCCESS, and a RETRY after STARTED stays RETRY;
* every other field takes its value from the logically latest event that carries it.

The maps are guarded by a lock, so a UI thread may read while a receiver writes.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from .. import states
from .payloads import Event

__all__ = ["State", "Task", "Worker", "TaskIndex", "EventKey", "HEARTBEAT_EXPIRE_WINDOW"]

#: A worker is alive while its last heartbeat is younger than ``freq`` times this.
HEARTBEAT_EXPIRE_WINDOW = 2.0
#: Heartbeat times kept per worker.
HEARTBEATS_KEPT = 4
#: Timeline entries kept per task (a task retried many times keeps its latest ones).
TIMELINE_KEPT = 32
#: Heartbeat interval assumed for a worker that never said (Celery's default).
DEFAULT_FREQ = 60.0

#: One event's place in the logical order: (clock, timestamp, origin, task uuid, type).
#: The same tuple is the heap entry, the timeline entry and the merge key.
EventKey = tuple[int, float, str, str, str]

_COMMON = frozenset(
    {"type", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received", "uuid"}
)
_TYPE_STATES = {
    "task-sent": states.PENDING,
    "task-received": states.RECEIVED,
    "task-started": states.STARTED,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-retried": states.RETRY,
    "task-revoked": states.REVOKED,
    "task-rejected": states.REJECTED,
}
#: (tier, precedence) of a state: tier 2 finished, 0 only-sent, 1 everything else.
_RANKS = {
    states.PENDING: (0, 0),
    states.REVOKED: (2, 0),
    states.FAILURE: (2, 1),
    states.SUCCESS: (2, 2),
}
_MIDDLE = (1, 0)


class Task:
    """One task as events describe it.

    Timestamps of each kind of event (``sent``, ``received``, ``started``, ``succeeded``,
    ``failed``, ``retried``, ``revoked``, ``rejected``) are epoch seconds, or None.
    ``worker`` is the node name of the worker that handled it last, ``client`` the one
    that sent it. ``args``/``kwargs``/``result``/``exception`` are reprs, as events carry.
    """

    __slots__ = (
        "_keys",
        "_rank",
        "_state_key",
        "args",
        "children",
        "client",
        "clock",
        "eta",
        "exception",
        "exchange",
        "expired",
        "expires",
        "extra",
        "failed",
        "kwargs",
        "name",
        "parent_id",
        "queue",
        "received",
        "rejected",
        "requeue",
        "result",
        "retried",
        "retries",
        "revoked",
        "root_id",
        "routing_key",
        "runtime",
        "sent",
        "signum",
        "started",
        "state",
        "succeeded",
        "terminated",
        "timeline",
        "timestamp",
        "traceback",
        "uuid",
        "worker",
    )

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.state: str | None = None
        self.name: str | None = None
        self.args: str | None = None
        self.kwargs: str | None = None
        self.eta: str | None = None
        self.expires: str | None = None
        self.retries: int | None = None
        self.root_id: str | None = None
        self.parent_id: str | None = None
        self.queue: str | None = None
        self.exchange: str | None = None
        self.routing_key: str | None = None
        self.result: str | None = None
        self.exception: str | None = None
        self.traceback: str | None = None
        self.runtime: float | None = None
        self.terminated: bool | None = None
        self.signum: Any = None
        self.expired: bool | None = None
        self.requeue: bool | None = None
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.succeeded: float | None = None
        self.failed: float | None = None
        self.retried: float | None = None
        self.revoked: float | None = None
        self.rejected: float | None = None
        #: Timestamp and clock of the event that decided ``state``.
        self.timestamp: float | None = None
        self.clock: int = 0
        self.worker: str | None = None
        self.client: str | None = None
        #: Ids of child tasks (tasks whose ``parent_id`` is this one).
        self.children: set[str] = set()
        #: Fields we have no attribute for (custom events, newer peers).
        self.extra: dict[str, Any] | None = None
        #: This task's events in logical order, the latest ``TIMELINE_KEPT``.
        self.timeline: list[EventKey] = []
        self._keys: dict[str, EventKey] = {}
        self._rank: tuple[int, int] = (-1, 0)
        self._state_key: EventKey | None = None

    def __repr__(self) -> str:
        return f"<Task {self.name or '?'}[{self.uuid}] {self.state}>"

    @property
    def id(self) -> str:
        return self.uuid

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def as_dict(self) -> dict[str, Any]:
        """Public fields as a plain dict (for JSON, the camera and the UI)."""
        out = {
            name: getattr(self, name)
            for name in self.__slots__
            if not name.startswith("_") and name not in ("children", "timeline", "extra")
        }
        out["children"] = sorted(self.children)
        if self.extra:
            out.update(self.extra)
        return out

    def _apply(self, type_: str, event: Event, key: EventKey) -> None:
        """Merge one event (see the module docstring for the rules)."""
        keys = self._keys
        state = _TYPE_STATES.get(type_) or type_[5:].upper()
        rank = _RANKS.get(state, _MIDDLE)
        if rank > self._rank or (rank == self._rank and key > self._state_key):  # type: ignore[operator]
            self._rank = rank
            self._state_key = key
            self.state = state
            self.timestamp = event.get("timestamp")
            self.clock = key[0]
        timeline = self.timeline
        if not timeline or key > timeline[-1]:
            timeline.append(key)
        else:
            timeline.insert(_bisect(timeline, key), key)
        if len(timeline) > TIMELINE_KEPT:
            del timeline[0]
        stamp = type_[5:]
        if stamp:  # task-succeeded -> .succeeded; custom types land in .extra
            self._set(keys, stamp, event.get("timestamp"), key)
        origin = event.get("hostname")
        if type_ == "task-sent":
            self._set(keys, "client", origin, key)
        else:
            self._set(keys, "worker", origin, key)
        for field, value in event.items():
            if field not in _COMMON:
                self._set(keys, field, value, key)

    def _set(self, keys: dict[str, EventKey], field: str, value: Any, key: EventKey) -> None:
        old = keys.get(field)
        if old is not None and old >= key:
            return
        keys[field] = key
        if field in _TASK_FIELDS:
            setattr(self, field, value)
        else:
            if self.extra is None:
                self.extra = {}
            self.extra[field] = value


#: Task attributes an event field may set directly (others go to ``Task.extra``).
_TASK_FIELDS = frozenset(Task.__slots__) - {
    "_keys",
    "_rank",
    "_state_key",
    "children",
    "timeline",
    "extra",
    "uuid",
    "state",
    "timestamp",
    "clock",
}


def _bisect(items: list[EventKey], key: EventKey) -> int:
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


class Worker:
    """One worker node as events describe it."""

    __slots__ = (
        "active",
        "clock",
        "counts",
        "freq",
        "heartbeats",
        "hostname",
        "loadavg",
        "pid",
        "processed",
        "sw_ident",
        "sw_sys",
        "sw_ver",
        "utcoffset",
    )

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.pid: int | None = None
        self.freq: float = DEFAULT_FREQ
        #: Local receipt times of the latest heartbeats (any event counts), oldest first.
        self.heartbeats: list[float] = []
        self.clock = 0
        self.active: int | None = None
        self.processed: int | None = None
        self.loadavg: list[float] | None = None
        self.sw_ident: str | None = None
        self.sw_ver: str | None = None
        self.sw_sys: str | None = None
        self.utcoffset: int | None = None
        #: Task events seen from this worker, by type (``task-succeeded``: 12, ...).
        self.counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<Worker {self.hostname} {'ONLINE' if self.alive else 'OFFLINE'}>"

    @property
    def id(self) -> str:
        return self.hostname

    def alive_at(self, now: float, window: float = HEARTBEAT_EXPIRE_WINDOW) -> bool:
        hb = self.heartbeats
        return bool(hb) and now < hb[-1] + self.freq * window

    @property
    def alive(self) -> bool:
        return self.alive_at(time.time())

    @property
    def status_string(self) -> str:
        return "ONLINE" if self.alive else "OFFLINE"

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["alive"] = self.alive
        return out

    def _heartbeat(self, at: float) -> None:
        hb = self.heartbeats
        if not hb or at >= hb[-1]:
            hb.append(at)
        else:
            hb.insert(_bisect(hb, at), at)  # type: ignore[arg-type]
        if len(hb) > HEARTBEATS_KEPT:
            del hb[0]


_WORKER_FIELDS = frozenset(
    {"pid", "freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys", "utcoffset"}
)


class TaskIndex:
    """Task ids grouped by a key (task name or worker), oldest first.

    ``index[key]`` gives the tasks; ``index(key, limit=10)`` the latest ``(uuid, task)``
    pairs, newest first (Celery's ``state.tasks_by_type(name)`` form).
    """

    def __init__(self, tasks: OrderedDict[str, Task], lock: threading.RLock) -> None:
        self._tasks = tasks
        self._lock = lock
        self._ids: dict[str, dict[str, None]] = {}

    def _add(self, key: str, uuid: str) -> None:
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = {}
        ids[uuid] = None

    def _remove(self, key: str, uuid: str) -> None:
        ids = self._ids.get(key)
        if ids is not None:
            ids.pop(uuid, None)
            if not ids:
                del self._ids[key]

    def __getitem__(self, key: str) -> list[Task]:
        with self._lock:
            tasks = self._tasks
            return [tasks[i] for i in self._ids.get(key, ()) if i in tasks]

    def __call__(
        self, key: str, limit: int | None = None, reverse: bool = True
    ) -> list[tuple[str, Task]]:
        with self._lock:
            ids = list(self._ids.get(key, ()))
            if reverse:
                ids.reverse()
            if limit is not None:
                ids = ids[:limit]
            tasks = self._tasks
            return [(i, tasks[i]) for i in ids if i in tasks]

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._ids))

    def __len__(self) -> int:
        return len(self._ids)

    def counts(self) -> dict[str, int]:
        """How many tasks in memory per key."""
        with self._lock:
            return {k: len(v) for k, v in self._ids.items()}


NodeCallback = Callable[[Worker], None]


class State:
    """The cluster rebuilt from events (see the module docstring).

    Args:
        callback: Called with ``(state, event)`` after every event is applied.
        max_workers_in_memory: Workers kept; the least recently heard from go first.
        max_tasks_in_memory: Tasks kept; the least recently updated go first.
        max_events_in_memory: Size of the ordered event heap (default 4 per task).
        on_node_join: Called with the worker when one comes alive (first event, or the
            first after it expired or went offline).
        on_node_leave: Called with the worker when it sends ``worker-offline``.
        expire_window: A worker is alive while its last heartbeat is younger than its
            ``freq`` times this.
    """

    def __init__(
        self,
        callback: Callable[[State, Event], None] | None = None,
        *,
        max_workers_in_memory: int = 5000,
        max_tasks_in_memory: int = 10000,
        max_events_in_memory: int | None = None,
        on_node_join: NodeCallback | None = None,
        on_node_leave: NodeCallback | None = None,
        expire_window: float = HEARTBEAT_EXPIRE_WINDOW,
    ) -> None:
        for name, value in (
            ("max_workers_in_memory", max_workers_in_memory),
            ("max_tasks_in_memory", max_tasks_in_memory),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        self.callback = callback
        self.max_workers_in_memory = max_workers_in_memory
        self.max_tasks_in_memory = max_tasks_in_memory
        self.max_events_in_memory = (
            max_events_in_memory if max_events_in_memory is not None else 4 * max_tasks_in_memory
        )
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.expire_window = expire_window
        self._lock = threading.RLock()
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.workers: OrderedDict[str, Worker] = OrderedDict()
        self.tasks_by_type = TaskIndex(self.tasks, self._lock)
        self.tasks_by_worker = TaskIndex(self.tasks, self._lock)
        #: Task events in logical order, bounded (the oldest fall out first).
        self.event_heap: list[EventKey] = []
        #: Children seen before their parent: parent id -> child ids (bounded).
        self._orphans: OrderedDict[str, set[str]] = OrderedDict()
        self.event_count = 0
        self.task_count = 0

    def __repr__(self) -> str:
        return (
            f"<State: events={self.event_count} tasks={len(self.tasks)} "
            f"workers={len(self.workers)}>"
        )

    # -- applying events -------------------------------------------------------------------

    def event(self, event: Event) -> Task | Worker | None:
        """Apply one event; returns the task or worker it describes (None if neither)."""
        with self._lock:
            self.event_count += 1
            type_ = event.get("type", "")
            if type_.startswith("task-"):
                found: Task | Worker | None = self._task_event(type_, event)
            elif type_.startswith("worker-"):
                found = self._worker_event(type_, event)
            else:
                found = None
        if self.callback is not None:
            self.callback(self, event)
        return found

    def freeze_while(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` with no event applied meanwhile (a consistent snapshot)."""
        with self._lock:
            return fn(*args, **kwargs)

    def _worker(self, hostname: str) -> tuple[Worker, bool]:
        workers = self.workers
        worker = workers.get(hostname)
        if worker is None:
            worker = workers[hostname] = Worker(hostname)
            if len(workers) > self.max_workers_in_memory:
                workers.popitem(last=False)
            return worker, True
        workers.move_to_end(hostname)
        return worker, False

    def _worker_event(self, type_: str, event: Event) -> Worker | None:
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return None
        worker, _ = self._worker(hostname)
        now = time.time()
        was_alive = worker.alive_at(now, self.expire_window)
        clock = event.get("clock")
        if not isinstance(clock, int) or clock >= worker.clock:  # an older event changes nothing
            if isinstance(clock, int):
                worker.clock = clock
            for field in _WORKER_FIELDS.intersection(event):
                setattr(worker, field, event[field])
        if type_ == "worker-offline":
            worker.heartbeats.clear()
            if was_alive and self.on_node_leave is not None:
                self.on_node_leave(worker)
            return worker
        self._beat(worker, event, was_alive, now)
        return worker

    def _beat(self, worker: Worker, event: Event, was_alive: bool, now: float) -> None:
        at = event.get("local_received") or event.get("timestamp")
        if isinstance(at, int | float):
            worker._heartbeat(float(at))
            if (
                not was_alive
                and self.on_node_join is not None
                and worker.alive_at(now, self.expire_window)
            ):
                self.on_node_join(worker)

    def _task_event(self, type_: str, event: Event) -> Task | None:
        uuid = event.get("uuid")
        if not isinstance(uuid, str):
            return None
        hostname = event.get("hostname") or ""
        clock = event.get("clock")
        timestamp = event.get("timestamp")
        key: EventKey = (
            clock if isinstance(clock, int) else 0,
            float(timestamp) if isinstance(timestamp, int | float) else 0.0,
            str(hostname),
            uuid,
            type_,
        )
        tasks = self.tasks
        task = tasks.get(uuid)
        if task is None:
            task = tasks[uuid] = Task(uuid)
            self.task_count += 1
            orphans = self._orphans.pop(uuid, None)
            if orphans:
                task.children.update(orphans)
            if len(tasks) > self.max_tasks_in_memory:
                self._evict()
        else:
            tasks.move_to_end(uuid)
        old_name, old_worker, old_parent = task.name, task.worker, task.parent_id
        task._apply(type_, event, key)
        if task.name != old_name:
            if old_name is not None:
                self.tasks_by_type._remove(old_name, uuid)
            if task.name is not None:
                self.tasks_by_type._add(task.name, uuid)
        if task.worker != old_worker:
            if old_worker is not None:
                self.tasks_by_worker._remove(old_worker, uuid)
            if task.worker is not None:
                self.tasks_by_worker._add(task.worker, uuid)
        if task.parent_id != old_parent and task.parent_id:
            self._link(task.parent_id, uuid)
        heap = self.event_heap
        if len(heap) < self.max_events_in_memory:
            heapq.heappush(heap, key)
        else:
            heapq.heappushpop(heap, key)
        if type_ != "task-sent" and hostname:
            worker, _ = self._worker(hostname)
            worker.counts[type_] = worker.counts.get(type_, 0) + 1
            now = time.time()
            self._beat(worker, event, worker.alive_at(now, self.expire_window), now)
        return task

    def _link(self, parent_id: str, child_id: str) -> None:
        parent = self.tasks.get(parent_id)
        if parent is not None:
            parent.children.add(child_id)
            return
        orphans = self._orphans
        children = orphans.get(parent_id)
        if children is None:
            children = orphans[parent_id] = set()
            if len(orphans) > self.max_tasks_in_memory:
                orphans.popitem(last=False)
        children.add(child_id)

    def _evict(self) -> None:
        uuid, task = self.tasks.popitem(last=False)
        if task.name is not None:
            self.tasks_by_type._remove(task.name, uuid)
        if task.worker is not None:
            self.tasks_by_worker._remove(task.worker, uuid)

    def clear(self, ready: bool = True) -> None:
        """Forget tasks (only finished ones when ``ready``), workers and the heap."""
        with self._lock:
            if ready:
                for uuid in [u for u, t in self.tasks.items() if t.ready]:
                    task = self.tasks.pop(uuid)
                    if task.name is not None:
                        self.tasks_by_type._remove(task.name, uuid)
                    if task.worker is not None:
                        self.tasks_by_worker._remove(task.worker, uuid)
            else:
                self.tasks.clear()
                self.tasks_by_type._ids.clear()
                self.tasks_by_worker._ids.clear()
                self.workers.clear()
                self._orphans.clear()
                self.event_count = 0
                self.task_count = 0
            self.event_heap.clear()

    # -- queries ---------------------------------------------------------------------------

    def task(self, uuid: str) -> Task | None:
        with self._lock:
            return self.tasks.get(uuid)

    def tasks_by_state(self, state: str, limit: int | None = None) -> list[Task]:
        """Tasks in ``state``, most recently updated first."""
        with self._lock:
            out = []
            for task in reversed(self.tasks.values()):
                if task.state == state:
                    out.append(task)
                    if limit is not None and len(out) >= limit:
                        break
            return out

    def latest(self, limit: int = 20) -> list[Task]:
        """The most recently updated tasks, newest first."""
        with self._lock:
            out = []
            for task in reversed(self.tasks.values()):
                out.append(task)
                if len(out) >= limit:
                    break
            return out

    def tasks_by_time(self, limit: int | None = None) -> list[Task]:
        """Tasks by their latest event in logical order (clock, timestamp, origin),
        newest first."""
        with self._lock:
            seen: set[str] = set()
            out = []
            for key in sorted(self.event_heap, reverse=True):
                uuid = key[3]
                if uuid in seen:
                    continue
                seen.add(uuid)
                task = self.tasks.get(uuid)
                if task is not None:
                    out.append(task)
                    if limit is not None and len(out) >= limit:
                        break
            return out

    def timeline(self, uuid: str) -> list[tuple[str, float, int, str]]:
        """A task's events in logical order as ``(type, timestamp, clock, origin)``."""
        with self._lock:
            task = self.tasks.get(uuid)
            if task is None:
                return []
            return [(k[4], k[1], k[0], k[2]) for k in task.timeline]

    def children_of(self, uuid: str) -> list[Task]:
        with self._lock:
            task = self.tasks.get(uuid)
            if task is None:
                return []
            return [self.tasks[c] for c in sorted(task.children) if c in self.tasks]

    def parent_of(self, uuid: str) -> Task | None:
        with self._lock:
            task = self.tasks.get(uuid)
            if task is None or not task.parent_id:
                return None
            return self.tasks.get(task.parent_id)

    def alive_workers(self) -> list[Worker]:
        now = time.time()
        with self._lock:
            return [w for w in self.workers.values() if w.alive_at(now, self.expire_window)]

    def worker_counters(self, hostname: str) -> dict[str, int]:
        """Task events seen from one worker, by type (``{}`` for an unknown worker)."""
        with self._lock:
            worker = self.workers.get(hostname)
            return dict(worker.counts) if worker is not None else {}

    def task_types(self) -> list[str]:
        return sorted(self.tasks_by_type)

    def state_counts(self) -> dict[str, int]:
        """How many tasks in memory are in each state."""
        with self._lock:
            out: dict[str, int] = {}
            for task in self.tasks.values():
                if task.state is not None:
                    out[task.state] = out.get(task.state, 0) + 1
            return out
