"""Helpers for testing code that uses celeriac: a real worker on a thread."""

from .worker import WorkerThread, start_worker

__all__ = ["WorkerThread", "start_worker"]
