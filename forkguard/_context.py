"""Activity contexts: marks of live native state, counted across every thread.

``with forkguard.active("request"):`` says "native state is live right now".
A fork made while any context is live — in *any* thread, or in an asyncio task
suspended at an ``await`` — is a late fork. The seed looked only at the forking
thread's contextvar and missed a request served by another thread.

Hot path: each thread owns a list of counters (one slot per context name) that
only that thread writes, so entering and leaving take no lock. The fork child
sums the lists it inherited: its memory is the parent's exact state at the
instant of ``fork()``, which no ``before`` hook running earlier could promise.

Under gevent or eventlet (imported before forkguard), ``threading.local`` is
per greenlet, so each greenlet counts for itself: a fork keeps the forking OS
thread's greenlets, and the child keeps their counters with them.
"""

from __future__ import annotations

import _thread
import itertools
import weakref

from ._process import native_ident

# threading.local is _thread._local; importing threading itself would add its
# own at-fork work to every fork of the process.
_local = _thread._local()
_names: dict[int, str] = {}  # slot index -> context name
_contexts: dict[str, ActiveContext] = {}
_indexes = itertools.count()
# Every thread's counter list, by a never-reused key. A thread's list is dropped
# when the thread ends with all counters at zero; a list still counting (the
# thread died inside a context, or it is a fork child's inherited copy) stays
# until the sum has been taken.
_thread_counts: dict[int, list[int]] = {}
_os_thread_of: dict[int, int] = {}  # key -> the OS thread its (green) thread runs in
_keys = itertools.count()
# No lock anywhere: registration uses atomic dict operations and next() on a
# counter, so nothing here can be left locked by a thread that a fork drops.


class ActiveContext:
    """Reusable, re-entrant marker of live state for one context name."""

    __slots__ = ("_index", "name")

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self._index = index

    def __enter__(self) -> ActiveContext:
        try:
            _local.counts[self._index] += 1
        except (AttributeError, IndexError):
            _counts_for_this_thread(self._index)[self._index] += 1
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            _local.counts[self._index] -= 1
        except (AttributeError, IndexError):
            # Left on another thread than it was entered on (a generator moved
            # between threads): the per-name sum over all threads stays right.
            _counts_for_this_thread(self._index)[self._index] -= 1

    def __repr__(self) -> str:
        return f"<forkguard.active({self.name!r})>"


class _ThreadToken:
    """Lives exactly as long as its thread's ``threading.local`` data."""

    __slots__ = ("__weakref__",)


def _counts_for_this_thread(index: int) -> list[int]:
    """This thread's counter list, registered on first use, long enough for ``index``."""
    counts = getattr(_local, "counts", None)
    if counts is None:
        counts = []
        key = next(_keys)
        token = _ThreadToken()
        _os_thread_of[key] = native_ident()
        _thread_counts[key] = counts
        _local.counts, _local.key, _local.token = counts, key, token
        weakref.finalize(token, _forget_thread, key).atexit = False
    if len(counts) <= index:
        counts.extend([0] * (index + 1 - len(counts)))
    return counts


def _forget_thread(key: int) -> None:
    counts = _thread_counts.get(key)
    if counts is not None and not any(counts):
        _thread_counts.pop(key, None)
        _os_thread_of.pop(key, None)


def active(name: str) -> ActiveContext:
    """Context manager marking live native state under ``name``; no lock taken."""
    try:
        return _contexts[name]
    except (KeyError, TypeError):
        return _new_context(name)


def _new_context(name: str) -> ActiveContext:
    if not isinstance(name, str):
        raise TypeError(f"a forkguard context name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a forkguard context name must not be empty")
    index = next(_indexes)
    _names[index] = name
    # Two threads may race to create the same name: setdefault keeps one, the
    # loser's index stays unused.
    return _contexts.setdefault(name, ActiveContext(name, index))


def live_contexts() -> dict[str, int]:
    """How many contexts of each name are live now, over all threads of this process."""
    totals: dict[str, int] = {}
    for counts in list(_thread_counts.values()):
        for index, n in enumerate(counts):
            if n:
                name = _names[index]
                totals[name] = totals.get(name, 0) + n
    return {name: n for name, n in totals.items() if n > 0}


def drop_inherited_threads(survivor: int | None) -> None:
    """In a fork child: forget the counters of threads that did not survive the fork.

    The counters of ``survivor`` (the OS thread whose code goes on here, None if
    none does) stay: its ``with`` blocks, and those of its greenlets, are still
    open in the child and will exit there.
    """
    for key in [key for key in _thread_counts if _os_thread_of.get(key) != survivor]:
        del _thread_counts[key]
        _os_thread_of.pop(key, None)
