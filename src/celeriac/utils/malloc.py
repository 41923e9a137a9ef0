"""Giving freed heap memory back to the system (glibc only).

glibc keeps memory that Python and the C libraries free in its heap for reuse, and
returns it to the system only from the top of the heap. A worker frees large buffers of
changing sizes all the time (claim replies of a few hundred messages, result batches),
so after a burst its memory stays at the burst's high-water mark, with no Python object
alive to account for it: about 1 KiB per 1,000 tasks across a long backlog, varying from
run to run. ``malloc_trim`` hands those free pages back.

Threads make it worse: glibc gives each thread that allocates while another holds the
heap's lock an arena of its own (up to eight per core), each growing and fragmenting on
its own. Python threads take turns under the GIL anyway, so two arenas cost them nothing,
and a thread pool's memory then grows like a single thread's. Where the user set glibc's
own ``MALLOC_ARENA_MAX``, that setting is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

__all__ = ["limit_arenas", "trimmer"]

#: Arenas a worker's threads share (glibc's ``M_ARENA_MAX``).
ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (call before starting threads).

    Returns True when set; False without glibc or when ``MALLOC_ARENA_MAX`` is set.
    """
    libc = _libc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def trimmer() -> Callable[[], object] | None:
    """``malloc_trim(0)`` of this process's C library, or None where there is none (not
    Linux, or a libc without it, such as musl)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)
