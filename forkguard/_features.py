"""Features: parts of an application whose native state may not survive a fork.

A feature stays on in a child forked *early* (no context live: a pre-fork web
worker starts with fresh state) and follows its ``late_fork`` policy in a child
forked *late* (some context live in some thread: ``multiprocessing`` or
``os.fork`` in the middle of a request): ``"disable"`` (the safe default),
``"reset"`` or ``"keep"``.
"""

from __future__ import annotations

import weakref
from collections import namedtuple

from . import _context, _log
from ._hooks import registry
from ._process import check_fork

TYPE_CHECKING = False  # the typing machinery costs milliseconds at import; type checkers read this as usual
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

    LateForkPolicy = Literal["disable", "reset", "keep"]

LATE_FORK_POLICIES: tuple[str, ...] = ("disable", "reset", "keep")


class FeatureChange(namedtuple("FeatureChange", "feature action reason")):
    """What the last fork did to one feature in this child, and why.

    ``feature`` is its name, ``action`` one of "kept", "disabled", "reset" or
    "unchanged" (it was already off), ``reason`` a sentence.
    """

    __slots__ = ()


class Feature:
    """A switchable part of the application, handled per fork kind in each child.

    ``on_early_fork()`` runs in an early-fork child (fresh native state for a
    worker). ``on_late_fork()`` runs in a late-fork child: with ``"disable"`` it
    should drop the inherited state before the feature switches off, with
    ``"reset"`` it re-initialises it (``on_early_fork`` is used when it is None).
    """

    def __init__(
        self,
        name: str,
        *,
        late_fork: LateForkPolicy = "disable",
        on_early_fork: Callable[[], object] | None = None,
        on_late_fork: Callable[[], object] | None = None,
        enabled: bool = True,
    ) -> None:
        if late_fork not in LATE_FORK_POLICIES:
            raise ValueError(
                f"forkguard.Feature({name!r}): late_fork={late_fork!r} is not a policy; "
                f"use one of {', '.join(LATE_FORK_POLICIES)}"
            )
        for label, fn in (("on_early_fork", on_early_fork), ("on_late_fork", on_late_fork)):
            if fn is not None and not callable(fn):
                raise TypeError(f"forkguard.Feature({name!r}): {label} must be callable or None")
        if not isinstance(enabled, bool):
            raise TypeError(f"forkguard.Feature({name!r}): enabled must be True or False, not {enabled!r}")
        self._context = _context.active(name)  # validates the name
        self.name = name
        self.late_fork = late_fork
        self.on_early_fork = on_early_fork
        self.on_late_fork = on_late_fork
        self._enabled = enabled
        self.disabled_reason: str | None = None if enabled else "created disabled"
        _features.append(weakref.ref(self))

    @property
    def enabled(self) -> bool:
        """Whether the feature may run in this process (re-checked after any fork)."""
        check_fork()
        return self._enabled

    def context(self) -> _context.ActiveContext:
        """Mark this feature's native state live; a fork inside it is a late fork."""
        return self._context

    def disable(self, reason: str = "disabled by the application") -> None:
        """Switch the feature off in this process, remembering why."""
        if not isinstance(reason, str):
            raise TypeError(f"forkguard.Feature.disable: reason must be a str, not {type(reason).__name__}")
        self._enabled = False
        self.disabled_reason = reason

    def enable(self) -> None:
        """Switch the feature back on in this process."""
        self._enabled = True
        self.disabled_reason = None

    def __repr__(self) -> str:
        state = "enabled" if self._enabled else f"disabled: {self.disabled_reason}"
        return f"<forkguard.Feature {self.name!r} late_fork={self.late_fork!r} {state}>"

    def _after_fork(self, late: bool, live: str) -> tuple[FeatureChange, Exception | None]:
        """Apply this feature's fork policy in a new child; runs once per child."""
        if not self._enabled:
            return FeatureChange(self.name, "unchanged", f"already disabled: {self.disabled_reason}"), None
        if not late:
            _log.debug("no active context, keeping %s enabled (early fork)", self.name)
            return self._run_callback(self.on_early_fork, "on_early_fork", "kept", "early fork")
        if self.late_fork == "keep":
            _log.debug("active context detected (%s), keeping %s enabled as configured (late fork)",
                      live, self.name)
            return FeatureChange(self.name, "kept", f"late fork ({live}), late_fork='keep'"), None
        if self.late_fork == "reset":
            _log.debug("active context detected (%s), resetting %s (late fork)", live, self.name)
            return self._run_callback(self.on_late_fork or self.on_early_fork, "reset", "reset", f"late fork ({live})")
        _log.debug("active context detected (%s), disabling %s (late fork)", live, self.name)
        change, error = self._run_callback(self.on_late_fork, "on_late_fork", "disabled", f"late fork ({live})")
        self.disable(change.reason)
        return change, error

    def _run_callback(
        self, fn: Callable[[], object] | None, label: str, action: str, reason: str
    ) -> tuple[FeatureChange, Exception | None]:
        """Run a fork callback; if it fails the feature is disabled, since its state is unknown."""
        error = None if fn is None else registry.call_guarded(f"feature {self.name!r} {label}", fn)
        if error is not None:
            reason = f"{reason}; {label} raised {type(error).__name__}: {error}"
            self.disable(reason)
            return FeatureChange(self.name, "disabled", reason), error
        return FeatureChange(self.name, action, reason), None


_features: list[weakref.ref[Feature]] = []


def features() -> list[Feature]:
    """Every feature still alive in this process, in creation order."""
    _features[:] = [ref for ref in _features if ref() is not None]
    return [f for f in (ref() for ref in _features) if f is not None]


def apply_fork_policies(live_contexts: dict[str, int]) -> tuple[tuple[FeatureChange, ...], Exception | None]:
    """In a new child: apply every feature's policy for this fork's kind."""
    late = bool(live_contexts)
    live = ", ".join(f"{name}×{n}" for name, n in sorted(live_contexts.items()))
    changes = []
    first_error: Exception | None = None
    for feature in features():
        change, error = feature._after_fork(late, live)
        changes.append(change)
        first_error = first_error or error
    return tuple(changes), first_error
