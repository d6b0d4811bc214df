"""Fork-safe primitives: locks and friends that are fresh in a child, per-process values, services.

A lock that another thread held at the fork stays locked forever in the child:
that thread does not exist there. Each primitive here keeps the pid it was
made for and is re-made on first use in a new process, whatever made the fork
(libc ``fork()`` included); nothing runs in the child until it is used, so a
fork costs nothing more for each primitive.

The forking thread is the one thread that survives a fork. After ``os.fork()``
its code goes on in the child, with its ``with`` blocks still open: what it
held stays held there, so that its ``release()`` still matches. A
multiprocessing child never returns to the code that forked it (it runs the
target and exits), so there nothing stays held. Each primitive records which
OS thread holds it, since the inherited lock's own state cannot be read safely.

Under gevent or eventlet the forking OS thread's greenlets all survive the fork,
holding and waiting as before: a primitive keeps its inherited state (holders
and waiting greenlets included) and gives back only what other OS threads held.
"""

from __future__ import annotations

import _thread
import weakref
from types import GenericAlias

from . import _process
from ._env import check_seconds
from ._process import _identity, _page, native_ident

TYPE_CHECKING = False  # the typing machinery costs milliseconds at import; type checkers read this as usual
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


class _PerProcess:
    """Base: ``_current()`` returns the inner primitive made for this process."""

    __slots__ = ("_inner", "_pid")

    def __init__(self) -> None:
        self._pid = _identity[0]
        self._inner = self._make(None)

    def _current(self):  # type: ignore[no-untyped-def]
        if _page[0] and self._pid == _identity[0]:
            return self._inner
        _process.check_fork()
        if self._pid != _identity[0]:
            with _process._remake_lock[0]:
                if self._pid != _identity[0]:
                    # _inner before _pid: a reader that sees the new pid sees the new inner.
                    if _process.greenlets_patched():
                        self._inner = self._carry(self._inner, _process.fork_thread())
                    else:
                        self._inner = self._make(self._inner)
                    self._pid = _identity[0]
        return self._inner

    def _make(self, inherited):  # type: ignore[no-untyped-def]
        """A fresh inner primitive for this process; ``inherited`` is the parent's (None at creation)."""
        raise NotImplementedError

    def _carry(self, inherited, fork_thread):  # type: ignore[no-untyped-def]
        """Under greenlets: the inherited primitive, less what OS threads other than ``fork_thread`` held."""
        return inherited


_locks: weakref.WeakSet[Lock] = weakref.WeakSet()


def held_locks() -> list[tuple[int, Lock]]:
    """(owner thread ident, lock) for every forkguard Lock held in this process now."""
    _process.check_fork()
    return [(lock._owner, lock) for lock in list(_locks) if lock._owner is not None and lock.locked()]


class Lock(_PerProcess):
    """``threading.Lock`` that is free in a child unless the forking thread held it (and goes on there)."""

    __slots__ = ("__weakref__", "_owner")

    def __init__(self) -> None:
        self._owner: int | None = None
        super().__init__()
        _locks.add(self)  # for doctor: which thread holds which lock

    def _make(self, inherited):  # type: ignore[no-untyped-def]
        lock = _thread.allocate_lock()  # looked up now: a greenlet-aware lock once gevent or eventlet patched it
        if inherited is not None:
            if self._owner is not None and self._owner == _process.forker():
                lock.acquire()  # the forking thread is still inside its `with lock:` in the child
            else:
                self._owner = None
        return lock

    def _carry(self, inherited, fork_thread):  # type: ignore[no-untyped-def]
        if self._owner is not None and self._owner != fork_thread:
            self._owner = None
            inherited.release()  # its holder was a thread that is gone; a waiting greenlet may take it
        return inherited

    # acquire and release inline _current()'s fast path: they are the hot path.
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``threading.Lock.acquire``."""
        inner = self._inner if _page[0] and self._pid == _identity[0] else self._current()
        if inner.acquire(blocking, timeout):
            self._owner = native_ident()
            return True
        return False

    def release(self) -> None:
        """As ``threading.Lock.release``."""
        # The inner lock first: in a new child _current() re-makes it from _owner.
        inner = self._inner if _page[0] and self._pid == _identity[0] else self._current()
        self._owner = None
        inner.release()

    def locked(self) -> bool:
        return self._current().locked()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()


class RLock(_PerProcess):
    """``threading.RLock`` that is free in a child unless the forking thread held it (and goes on there)."""

    __slots__ = ("_depth", "_owner")

    def __init__(self) -> None:
        self._owner: int | None = None
        self._depth = 0  # written only by the owning thread while it holds the lock
        super().__init__()

    def _make(self, inherited):  # type: ignore[no-untyped-def]
        if _process.greenlets_patched():
            import threading

            lock = threading.RLock()  # gevent's and eventlet's are greenlet-aware; the C one would block the hub
        else:
            lock = _thread.RLock()
        if inherited is not None:
            if self._owner is not None and self._owner == _process.forker():
                # Held again at the same depth, owned by the forking thread
                # whichever thread gets here first.
                lock._acquire_restore((self._depth, self._owner))
            else:
                self._owner, self._depth = None, 0
        return lock

    def _carry(self, inherited, fork_thread):  # type: ignore[no-untyped-def]
        if self._owner is not None and self._owner != fork_thread:
            self._owner, self._depth = None, 0
            inherited._release_save()  # every level its gone holder took
        return inherited

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        inner = self._inner if _page[0] and self._pid == _identity[0] else self._current()
        if inner.acquire(blocking, timeout):
            self._owner = native_ident()
            self._depth += 1
            return True
        return False

    def release(self) -> None:
        inner = self._inner if _page[0] and self._pid == _identity[0] else self._current()
        # Only its owner changes the depth (otherwise inner.release() raises, and nothing changed).
        if self._owner == native_ident() and inner._is_owned():
            self._depth -= 1
            if not self._depth:
                self._owner = None
        inner.release()

    # What threading.Condition asks of an RLock, so that wait() releases every level.
    def _is_owned(self) -> bool:
        return self._current()._is_owned()

    def _release_save(self) -> object:
        inner = self._current()
        state = inner._release_save()
        depth, self._depth, self._owner = self._depth, 0, None
        return state, depth

    def _acquire_restore(self, state: tuple[object, int]) -> None:
        inner_state, depth = state
        self._current()._acquire_restore(inner_state)
        self._owner, self._depth = native_ident(), depth

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()


class Condition(_PerProcess):
    """``threading.Condition`` whose waiters (threads of the parent) are gone in a child."""

    __slots__ = ("_lock",)

    def __init__(self, lock: Lock | RLock | None = None) -> None:
        if lock is not None and not isinstance(lock, (Lock, RLock)):
            raise TypeError(f"forkguard.Condition: lock must be a forkguard.Lock or forkguard.RLock (a fork-safe "
                            f"lock), not {type(lock).__name__}")
        self._lock = lock if lock is not None else RLock()
        super().__init__()

    def _make(self, inherited):  # type: ignore[no-untyped-def]
        import threading

        return threading.Condition(self._lock)

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        return self._current().wait(timeout)

    def wait_for(self, predicate: Callable[[], object], timeout: float | None = None) -> object:
        return self._current().wait_for(predicate, timeout)

    def notify(self, n: int = 1) -> None:
        self._current().notify(n)

    def notify_all(self) -> None:
        self._current().notify_all()


class Event(_PerProcess):
    """``threading.Event``; a child keeps the flag (plain state) but not the parent's waiters."""

    __slots__ = ()

    def _make(self, inherited):  # type: ignore[no-untyped-def]
        import threading

        event = threading.Event()
        if inherited is not None and inherited._flag:  # read the flag, never the inherited lock
            event.set()
        return event

    def is_set(self) -> bool:
        return self._current().is_set()

    def set(self) -> None:
        self._current().set()

    def clear(self) -> None:
        self._current().clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self._current().wait(timeout)


class Semaphore(_PerProcess):
    """``threading.Semaphore`` that starts over in a child, less the permits the forking thread holds.

    Permits held at the fork by other threads are theirs, and those threads are
    gone: they come back. Permits the forking thread holds stay taken, since its
    code goes on in the child and will release them.
    """

    __slots__ = ("_held", "_value")
    _kind = "Semaphore"

    def __init__(self, value: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"forkguard.{self._kind}: value must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"forkguard.{self._kind}: value must be >= 0, not {value!r}")
        self._value = value
        self._held: dict[int, int] = {}  # thread ident -> permits it acquired and has not released
        super().__init__()

    def _make(self, inherited):  # type: ignore[no-untyped-def]
        import threading

        semaphore = getattr(threading, self._kind)(self._value)
        forker = _process.forker() if inherited is not None else None
        held = min(self._held.get(forker, 0), self._value) if forker is not None else 0
        for _ in range(held):
            semaphore.acquire(blocking=False)
        self._held = {forker: held} if held else {}
        return semaphore

    def _carry(self, inherited, fork_thread):  # type: ignore[no-untyped-def]
        gone = sum(n for ident, n in self._held.items() if ident != fork_thread)
        for _ in range(gone):  # the permits of threads that are gone come back (one at a time: gevent's
            inherited.release()  # Semaphore.release takes no count)
        self._held = {ident: n for ident, n in self._held.items() if ident == fork_thread}
        return inherited

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if self._current().acquire(blocking, timeout):
            me = native_ident()
            self._held[me] = self._held.get(me, 0) + 1
            return True
        return False

    def release(self, n: int = 1) -> None:
        self._current().release(n)
        me = native_ident()
        held = self._held.get(me)
        if held:  # a release by a thread that took no permit (signalling) changes no holder
            if held > n:
                self._held[me] = held - n
            else:
                del self._held[me]

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()


class BoundedSemaphore(Semaphore):
    """``threading.BoundedSemaphore`` that starts over at its initial value in a child."""

    __slots__ = ()
    _kind = "BoundedSemaphore"


def keep_forever(value: object) -> None:
    """Never finalize ``value`` in this process: one reference is leaked on purpose.

    A child must not close what its parent still uses, and a finalizer can do
    just that at interpreter exit (a database driver's sends its server a
    Terminate over the shared socket). A list would not do: module globals are
    cleared at exit.
    """
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(value))


class ForkLocal:
    """A value of this process: made by ``factory()`` on first ``get()`` in each process.

    A child never uses its parent's value, and never closes or finalizes it
    either: closing a database connection in the child would end the parent's
    session, since both share the socket (see :func:`keep_forever`).
    ``close(value)`` runs on ``reset()``, only in the process that made the value.
    """

    __slots__ = ("_close", "_factory", "_pid", "_value")

    __class_getitem__ = classmethod(GenericAlias)  # ForkLocal[Connection] in annotations

    def __init__(self, factory: Callable[[], T], close: Callable[[T], object] | None = None) -> None:
        if not callable(factory):
            raise TypeError(f"forkguard.ForkLocal: factory must be callable, not {type(factory).__name__}")
        if close is not None and not callable(close):
            raise TypeError(f"forkguard.ForkLocal: close must be callable or None, not {type(close).__name__}")
        self._factory, self._close = factory, close
        self._pid: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        """This process's value, made now if this process has none yet."""
        if _page[0] and self._pid == _identity[0]:
            return self._value  # type: ignore[return-value]
        return self._renew()

    def _renew(self) -> T:
        _process.check_fork()
        pid = _identity[0]
        if self._pid != pid:
            if self._pid is not None:
                keep_forever(self._value)
            value = self._factory()
            if self._pid != pid:  # another thread may have made one meanwhile: keep the first
                self._value, self._pid = value, pid
            elif self._close is not None:
                self._close(value)
        return self._value  # type: ignore[return-value]

    @property
    def has_value(self) -> bool:
        """Whether this process has made its value yet."""
        _process.check_fork()
        return self._pid == _identity[0]

    def reset(self) -> None:
        """Drop this process's value (``close(value)`` first); the next ``get()`` makes a new one."""
        if self.has_value:
            value, self._value, self._pid = self._value, None, None
            if self._close is not None:
                self._close(value)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        state = "set" if self._pid == _identity[0] else "unset"
        return f"<forkguard.ForkLocal {getattr(self._factory, '__qualname__', self._factory)!r} {state}>"


class Service:
    """A background thread that runs in every process: restarted in each child, stopped at exit.

    With ``interval``, ``target()`` runs every ``interval`` seconds; without it,
    ``target(stopping)`` runs once and should return soon after the
    ``stopping`` event is set. A running service's thread does not survive a
    fork (no thread does); forkguard starts a new one in the child.
    """

    def __init__(self, target: Callable[..., object], *, interval: float | None = None, name: str | None = None,
                 stop_timeout: float = 5.0) -> None:
        if not callable(target):
            raise TypeError(f"forkguard.Service: target must be callable, not {type(target).__name__}")
        if interval is not None:
            check_seconds(interval, "interval", "forkguard.Service", positive=True)
        check_seconds(stop_timeout, "stop_timeout", "forkguard.Service")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"forkguard.Service: name must be a str or None, not {type(name).__name__}")
        self.target, self.interval, self.stop_timeout = target, interval, stop_timeout
        self.name = name or f"forkguard-service-{getattr(target, '__qualname__', 'target')}"
        self._wanted = False  # inherited: a child restarts what its parent was running
        self._pid: int | None = None
        self._thread = None
        self._stopping = None
        _services_setup()
        _services.add(self)

    @property
    def running(self) -> bool:
        """Whether this process's thread of the service is alive."""
        _process.check_fork()
        return self._pid == _identity[0] and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread in this process (and, from now on, in every child)."""
        self._wanted = True
        self._start_here()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop and wait for it (``stop_timeout`` seconds by default)."""
        self._wanted = False
        if self._pid == _identity[0] and self._thread is not None:
            self._stopping.set()
            if self._thread is not _current_thread():
                self._thread.join(self.stop_timeout if timeout is None else timeout)
        self._thread = None

    def _start_here(self) -> None:
        import threading

        if self._pid == _identity[0] and self._thread is not None and self._thread.is_alive():
            return
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stopping,), name=self.name, daemon=True)
        self._pid = _identity[0]
        self._thread.start()

    def _run(self, stopping) -> None:  # type: ignore[no-untyped-def]
        from ._hooks import registry

        if self.interval is None:
            registry.call_guarded(f"service {self.name}", lambda: self.target(stopping))
            return
        while not stopping.wait(self.interval):
            registry.call_guarded(f"service {self.name}", self.target)

    def __repr__(self) -> str:
        return f"<forkguard.Service {self.name!r} {'running' if self.running else 'stopped'}>"


_services = None  # WeakSet of Service, made with the first one


def _current_thread():  # type: ignore[no-untyped-def]
    import threading

    return threading.current_thread()


def _services_setup() -> None:
    """On the first Service: the restart hooks and the exit handler."""
    global _services
    if _services is not None:
        return
    import atexit
    import os
    import threading  # noqa: F401 (must register its own after-fork step before ours, below)

    from ._hooks import registry
    from ._runtime import _state, made_by_gevent

    _services = weakref.WeakSet()
    # threading is imported by now, so its own after-fork step is registered
    # already and this hook runs after it: a thread started before that step
    # would be marked stopped by threading._after_fork.
    os.register_at_fork(after_in_child=_restart_services_at_fork)
    # A libc fork runs no CPython hook, and gevent's fork re-creates its hub
    # after the hooks: restart from forkguard's child step, which runs then.
    registry.add({"after_in_child": lambda: (_state[1] == "check_fork" or made_by_gevent()) and _restart_services()},
                 priority=0)
    atexit.register(_stop_services)


def _restart_services_at_fork() -> None:
    from ._runtime import waiting_for_gevent

    if not waiting_for_gevent():  # else forkguard's child step restarts them once gevent's hub is back
        _restart_services()


def _restart_services() -> None:
    greenlets = _process.greenlets_patched()
    for service in list(_services):
        if service._wanted:
            if greenlets and service._stopping is not None and service._pid != _identity[0]:
                # Its thread is a greenlet, and greenlets survive a fork: tell it to end
                # (threads do not survive, and their Event may hold a lock of a gone thread).
                # gevent's after-fork hook took it out of threading._active; back in, so
                # that the thread's own _delete() at its end does not raise KeyError.
                import threading

                threading._active.setdefault(service._thread.ident, service._thread)
                service._stopping.set()
            service._start_here()


def _stop_services() -> None:
    for service in list(_services):
        if service._wanted:
            service.stop()
