"""The at-fork hook registry: ordering, weak bound methods, unregister, error isolation.

CPython's ``os.register_at_fork`` can neither order hooks nor remove them, and
one raising hook is only printed. forkguard registers one dispatcher per phase
there and keeps its own registry: hooks run by priority (higher first after the
fork), then registration order; ``before`` hooks run in the reverse order, as
CPython does, so setup and teardown nest.
"""

from __future__ import annotations

import _thread
import itertools
import weakref
from time import monotonic

from . import _env, _log
from ._process import current_pid

TYPE_CHECKING = False  # the typing machinery costs milliseconds at import; type checkers read this as usual
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

    Phase = Literal["before", "after_in_parent", "after_in_child"]

STRICT_ENV = "FORKGUARD_STRICT_HOOKS"
SLOW_ENV = "FORKGUARD_SLOW_HOOK_SECONDS"


class Hook:
    """One registration: up to one callable per phase, removable as a unit."""

    __slots__ = ("__weakref__", "_refs", "_seq", "priority")

    def __init__(self, callables: dict[Phase, Callable[[], object]], priority: int, seq: int) -> None:
        self._refs = {phase: _ref(fn) for phase, fn in callables.items()}
        self.priority = priority
        self._seq = seq

    def target(self, phase: Phase) -> Callable[[], object] | None:
        """The callable for ``phase``; None when absent or its object was collected."""
        ref = self._refs.get(phase)
        return None if ref is None else _resolve(ref)

    def alive(self) -> bool:
        """False once every callable of this registration was garbage-collected."""
        return any(_resolve(ref) is not None for ref in self._refs.values())

    def holds(self, fn: Callable[..., object]) -> bool:
        return any(_resolve(ref) == fn for ref in self._refs.values())

    def unregister(self) -> None:
        """Remove this registration from every phase."""
        registry.remove(self)

    def __repr__(self) -> str:
        names = ", ".join(f"{p}={_describe(_resolve(r))}" for p, r in self._refs.items())
        return f"<forkguard.Hook {names} priority={self.priority}>"


def _ref(fn: Callable[[], object]) -> Callable[[], object] | weakref.WeakMethod:
    """A WeakMethod for bound methods (never keep their object alive), the callable itself otherwise."""
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        try:
            return weakref.WeakMethod(fn)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"forkguard.register: cannot hold {_describe(fn)} weakly ({type(fn.__self__).__name__} "
                "objects take no weak references); add __weakref__ to its __slots__ or register a function"
            ) from None
    return fn


def _resolve(entry: Callable[[], object] | weakref.WeakMethod) -> Callable[[], object] | None:
    """The callable behind a registry entry; None when its object was collected."""
    return entry() if entry.__class__ is weakref.WeakMethod else entry  # type: ignore[return-value]


def _describe(fn: object) -> str:
    if fn is None:
        return "<collected>"
    return getattr(fn, "__qualname__", None) or repr(fn)


class Registry:
    """Ordered hooks per phase, copy-on-write so a fork never sees a half-made list.

    Dispatch reads one precomputed tuple per phase: after a fork every object
    Python touches costs a copy-on-write page fault, so the fork path touches
    only that tuple and the callables in it.
    """

    def __init__(self) -> None:
        self._hooks: tuple[Hook, ...] = ()
        self.before: tuple[Callable[[], object] | weakref.WeakMethod, ...] = ()
        self.after_in_parent: tuple[Callable[[], object] | weakref.WeakMethod, ...] = ()
        self.after_in_child: tuple[Callable[[], object] | weakref.WeakMethod, ...] = ()
        self._seq = itertools.count()
        self._lock = _thread.allocate_lock()
        self._lock_pid = current_pid()
        self._errors = (current_pid(), 0)
        self._nested = (current_pid(), 0)
        self.strict = _env.read_bool(STRICT_ENV)
        self.slow = _env.read_seconds(SLOW_ENV, 1.0) or float("inf")  # 0 turns the warning off
        # The thread running hooks now, if any: a fork made from inside a hook
        # runs no forkguard hook (a `before` hook that forks would recurse).
        self.running_in: int | None = None

    @property
    def errors(self) -> int:
        """Hook and callback exceptions logged in this process (not its parent)."""
        pid, count = self._errors
        return count if pid == current_pid() else 0

    @property
    def nested_forks(self) -> int:
        """Forks this process made from inside a forkguard hook (they ran no hooks)."""
        pid, count = self._nested
        return count if pid == current_pid() else 0

    def in_hook(self) -> bool:
        """Whether the calling thread is running forkguard hooks right now."""
        return self.running_in == _thread.get_ident()

    def count_nested_fork(self) -> None:
        self._nested = (current_pid(), self.nested_forks + 1)

    def _locked(self) -> _thread.LockType:
        # Made anew in each process, on first use: a thread that is gone after
        # the fork may have held the parent's copy.
        if self._lock_pid != current_pid():
            self._lock, self._lock_pid = _thread.allocate_lock(), current_pid()
        return self._lock

    def add(self, callables: dict[Phase, Callable[[], object]], priority: int) -> Hook:
        for phase, fn in callables.items():
            if not callable(fn):
                raise TypeError(f"forkguard.register: {phase}= must be callable, got {type(fn).__name__}")
        if not callables:
            raise ValueError("forkguard.register: give at least one of before=, after_in_parent=, after_in_child=")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"forkguard.register: priority must be an int, got {type(priority).__name__}")
        hook = Hook(callables, priority, next(self._seq))
        with self._locked():
            self._publish(sorted((*self._hooks, hook), key=lambda h: (-h.priority, h._seq)))
        return hook

    def remove(self, item: Hook | Callable[..., object]) -> None:
        with self._locked():
            if isinstance(item, Hook):
                kept = [h for h in self._hooks if h is not item]
            else:
                kept = [h for h in self._hooks if not h.holds(item)]
            if len(kept) == len(self._hooks):
                raise ValueError(f"forkguard.unregister: {_describe(item)} is not registered")
            self._publish(kept)

    def _publish(self, hooks: list[Hook]) -> None:
        """Install a new hook list and its per-phase dispatch tuples (caller holds the lock)."""
        self._hooks = tuple(h for h in hooks if h.alive())
        for phase in ("after_in_parent", "after_in_child"):
            setattr(self, phase, tuple(h._refs[phase] for h in self._hooks if phase in h._refs))
        self.before = tuple(h._refs["before"] for h in reversed(self._hooks) if "before" in h._refs)

    def hooks(self) -> tuple[Hook, ...]:
        """All live registrations in after-fork order."""
        return tuple(h for h in self._hooks if h.alive())

    def run(self, phase: Phase) -> None:
        """Call every hook of ``phase``; a raising hook is logged and counted, the rest still run.

        A hook slower than ``FORKGUARD_SLOW_HOOK_SECONDS`` (1 s) is logged with its
        time. SystemExit or KeyboardInterrupt from a hook is re-raised once all
        hooks have run; in strict mode (``FORKGUARD_STRICT_HOOKS=1``) so is the
        first error.
        """
        first_error: Exception | None = None
        interrupt: BaseException | None = None
        collected = False
        outer, self.running_in = self.running_in, _thread.get_ident()
        try:
            started = monotonic()
            for entry in getattr(self, phase):
                if entry.__class__ is weakref.WeakMethod:
                    fn = entry()
                    if fn is None:
                        collected = True
                        continue
                else:
                    fn = entry
                try:
                    fn()
                except Exception as exc:
                    self.hook_failed(f"{phase} hook", fn)
                    first_error = first_error or exc
                except BaseException as exc:
                    self.hook_failed(f"{phase} hook", fn)
                    interrupt = interrupt or exc
                now = monotonic()
                if now - started >= self.slow:
                    _log.warning("%s hook %s took %.2f s (more than %s=%g)", phase, _describe(fn), now - started,
                                 SLOW_ENV, self.slow)
                started = now
        finally:
            self.running_in = outer
        if collected:
            with self._locked():
                self._publish(list(self._hooks))
        if interrupt is not None:
            raise interrupt
        self.raise_if_strict(first_error)

    def call_guarded(self, what: str, fn: Callable[[], object]) -> Exception | None:
        """Call ``fn``; log and count an exception instead of letting it stop the caller."""
        try:
            fn()
        except Exception as exc:
            self.hook_failed(what, fn)
            return exc
        return None

    def hook_failed(self, what: str, fn: Callable[[], object]) -> None:
        """Log the exception being handled, with its traceback, and count it for this process."""
        self._errors = (current_pid(), self.errors + 1)
        _log.error_with_traceback("%s %s raised", what, _describe(fn))

    def raise_if_strict(self, error: Exception | None) -> None:
        """Re-raise a hook's error in strict mode (FORKGUARD_STRICT_HOOKS=1), for test suites."""
        if error is not None and self.strict:
            raise error


registry = Registry()
