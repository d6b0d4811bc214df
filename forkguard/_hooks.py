"""The at-fork hook registry: ordering, weak bound methods, unregister, error isolation.

CPython's ``os.register_at_fork`` can neither order hooks nor remove them, and
one raising hook is only printed. forkguard registers one dispatcher per phase
there and keeps its own registry: hooks run by priority (higher first after the
fork), then registration order; ``before`` hooks run in the reverse order, as
CPython does, so setup and teardown nest.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Literal

Phase = Literal["before", "after_in_parent", "after_in_child"]
PHASES: tuple[Phase, ...] = ("before", "after_in_parent", "after_in_child")
STRICT_ENV = "FORKGUARD_STRICT_HOOKS"

log = logging.getLogger("forkguard")


def parse_bool_env(name: str, default: bool = False) -> bool:
    """Read a boolean FORKGUARD_* variable; raise ValueError naming it when unreadable."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean: set it to 1 or 0")


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
        return None if ref is None else ref()

    def alive(self) -> bool:
        """False once every callable of this registration was garbage-collected."""
        return any(ref() is not None for ref in self._refs.values())

    def holds(self, fn: Callable[..., object]) -> bool:
        return any(ref() == fn for ref in self._refs.values())

    def unregister(self) -> None:
        """Remove this registration from every phase."""
        registry.remove(self)

    def __repr__(self) -> str:
        names = ", ".join(f"{p}={_describe(r())}" for p, r in self._refs.items())
        return f"<forkguard.Hook {names} priority={self.priority}>"


def _ref(fn: Callable[[], object]) -> Callable[[], Callable[[], object] | None]:
    """A weak reference for bound methods (never keep their object alive), strong otherwise."""
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        try:
            return weakref.WeakMethod(fn)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"forkguard.register: cannot hold {_describe(fn)} weakly ({type(fn.__self__).__name__} "
                "objects take no weak references); add __weakref__ to its __slots__ or register a function"
            ) from None
    return lambda: fn


def _describe(fn: object) -> str:
    if fn is None:
        return "<collected>"
    return getattr(fn, "__qualname__", None) or repr(fn)


class Registry:
    """Ordered hooks per phase, copy-on-write so a fork never sees a half-made list."""

    def __init__(self) -> None:
        self._hooks: tuple[Hook, ...] = ()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.errors = 0  # hook exceptions in this process
        self.strict = parse_bool_env(STRICT_ENV)

    def add(self, callables: dict[Phase, Callable[[], object]], priority: int) -> Hook:
        for phase, fn in callables.items():
            if not callable(fn):
                raise TypeError(f"forkguard.register: {phase}= must be callable, got {type(fn).__name__}")
        if not callables:
            raise ValueError("forkguard.register: give at least one of before=, after_in_parent=, after_in_child=")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"forkguard.register: priority must be an int, got {type(priority).__name__}")
        with self._lock:
            hook = Hook(callables, priority, next(self._seq))
            self._hooks = tuple(sorted((*self._hooks, hook), key=lambda h: (-h.priority, h._seq)))
        return hook

    def remove(self, item: Hook | Callable[..., object]) -> None:
        with self._lock:
            if isinstance(item, Hook):
                kept = tuple(h for h in self._hooks if h is not item)
            else:
                kept = tuple(h for h in self._hooks if not h.holds(item))
            if len(kept) == len(self._hooks):
                raise ValueError(f"forkguard.unregister: {_describe(item)} is not registered")
            self._hooks = kept

    def hooks(self) -> tuple[Hook, ...]:
        """All live registrations in after-fork order."""
        return tuple(h for h in self._hooks if h.alive())

    def run(self, phase: Phase) -> None:
        """Call every hook of ``phase``; a raising hook is logged and counted, the rest still run.

        In strict mode (``FORKGUARD_STRICT_HOOKS=1``) the first error is re-raised
        once all hooks have run.
        """
        hooks = self._hooks if phase != "before" else reversed(self._hooks)
        label = f"{phase} hook"
        first_error: Exception | None = None
        collected = False
        for hook in hooks:
            ref = hook._refs.get(phase)
            if ref is None:
                continue
            fn = ref()
            if fn is None:
                collected = True
                continue
            error = self.call_guarded(label, fn)
            first_error = first_error or error
        if collected:
            self._prune()
        self.raise_if_strict(first_error)

    def call_guarded(self, what: str, fn: Callable[[], object]) -> Exception | None:
        """Call ``fn``; log and count an exception instead of letting it stop the caller."""
        try:
            fn()
        except Exception as exc:
            self.errors += 1
            log.error("%s %s raised", what, _describe(fn), exc_info=True)
            return exc
        return None

    def raise_if_strict(self, error: Exception | None) -> None:
        """Re-raise a hook's error in strict mode (FORKGUARD_STRICT_HOOKS=1), for test suites."""
        if error is not None and self.strict:
            raise error

    def _prune(self) -> None:
        with self._lock:
            self._hooks = tuple(h for h in self._hooks if h.alive())

    def after_fork_in_child(self) -> None:
        """Reset per-process state: the lock may have been held by a thread that is gone."""
        self._lock = threading.Lock()
        self.errors = 0


registry = Registry()
