"""What happens at a fork: the dispatchers given to ``os.register_at_fork`` and the child step.

The child step runs exactly once in every new process, whether CPython saw the
fork (its ``after_in_child`` hook) or a later :func:`check_fork` found it (libc
``fork()`` from C or ``ctypes``). It decides everything from the memory the
child inherited: the fork kind from the context counters of all threads, then
each feature's policy, then the user's ``after_in_child`` hooks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from . import _context, _features, _process
from ._features import FeatureChange
from ._hooks import Hook, registry

F = TypeVar("F", bound=Callable[[], object])


@dataclass(frozen=True)
class ForkInfo:
    """Where this process stands in forkguard's view of the fork tree."""

    pid: int
    #: pid of the process this one was forked from (None in the process that imported forkguard)
    parent_pid: int | None
    #: fork depth below the process that imported forkguard (0 there)
    generation: int
    is_child: bool
    #: "early" (no context was live at the fork), "late", or None when not a fork child
    kind: Literal["early", "late"] | None
    #: contexts live (name -> count, over all threads) at the instant of the fork
    live_contexts: dict[str, int] = field(default_factory=dict)
    #: how the fork was noticed: "os.fork" (CPython's at-fork hook) or "check_fork" (a libc-level fork)
    detected_by: str | None = None
    feature_changes: tuple[FeatureChange, ...] = ()
    #: hook and feature-callback exceptions logged in this process
    hook_errors: int = 0


_info = ForkInfo(pid=os.getpid(), parent_pid=None, generation=0, is_child=False, kind=None)


def _child_step(via: str, parent_pid: int) -> None:
    """Run once in each new process: decide the fork kind, apply features, run child hooks."""
    global _info
    registry.after_fork_in_child()
    live = _context.live_contexts()
    _context.drop_inherited_threads()
    _info = ForkInfo(
        pid=os.getpid(),
        parent_pid=parent_pid,
        generation=_info.generation + 1,
        is_child=True,
        kind="late" if live else "early",
        live_contexts=live,
        detected_by=via,
    )
    changes, feature_error = _features.apply_fork_policies(live)
    _info = replace(_info, feature_changes=changes)
    registry.run("after_in_child")
    registry.raise_if_strict(feature_error)


def _before_fork() -> None:
    _process.check_fork()  # a libc-forked process must settle its own identity before forking again
    registry.run("before")


def _after_fork_in_child() -> None:
    _process.new_process_detected("os.fork")


_process.set_new_process_handler(_child_step)
os.register_at_fork(
    before=_before_fork,
    after_in_parent=lambda: registry.run("after_in_parent"),
    after_in_child=_after_fork_in_child,
)


def fork_info() -> ForkInfo:
    """This process's fork record: generation, parent, early or late, what changed and why."""
    _process.check_fork()
    return replace(_info, hook_errors=registry.errors)


def register(
    *,
    before: Callable[[], object] | None = None,
    after_in_parent: Callable[[], object] | None = None,
    after_in_child: Callable[[], object] | None = None,
    priority: int = 0,
) -> Hook:
    """Register fork hooks; returns a handle whose ``unregister()`` removes them.

    Higher ``priority`` runs first after the fork and last before it. Bound
    methods are held weakly. ``after_in_child`` also runs after a libc-level
    fork, at the first :func:`check_fork` in the child; ``before`` and
    ``after_in_parent`` run only for forks Python makes.
    """
    callables = {
        phase: fn
        for phase, fn in (("before", before), ("after_in_parent", after_in_parent), ("after_in_child", after_in_child))
        if fn is not None
    }
    return registry.add(callables, priority)  # type: ignore[arg-type]


def unregister(hook: Hook | Callable[..., object]) -> None:
    """Remove a registration (a handle from :func:`register`, or a callable given to it)."""
    registry.remove(hook)


def before_fork(fn: F) -> F:
    """Decorator: run ``fn`` in the parent just before each fork."""
    register(before=fn)
    return fn


def after_fork_in_parent(fn: F) -> F:
    """Decorator: run ``fn`` in the parent just after each fork."""
    register(after_in_parent=fn)
    return fn


def after_fork_in_child(fn: F) -> F:
    """Decorator: run ``fn`` once in each new child process."""
    register(after_in_child=fn)
    return fn


def registered_hooks() -> tuple[Hook, ...]:
    """The live registrations, in after-fork order."""
    return registry.hooks()
