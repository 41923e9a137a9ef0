"""Helpers for testing code that uses celeriac: a real worker on a thread, captured events."""

from .events import EventCollector, capture_events
from .worker import WorkerThread, start_worker

__all__ = ["EventCollector", "WorkerThread", "capture_events", "start_worker"]
