"""What happens at a fork: the dispatchers given to ``os.register_at_fork`` and the child step.

The child step runs exactly once in every new process, whether CPython saw the
fork (its ``after_in_child`` hook) or a later :func:`check_fork` found it (libc
``fork()`` from C or ``ctypes``). It decides everything from the memory the
child inherited: the fork kind from the context counters of all threads, then
each feature's policy, then the user's ``after_in_child`` hooks.
"""

from __future__ import annotations

import os
from collections import namedtuple

from . import _context, _features, _policy, _process
from ._hooks import Hook, registry

TYPE_CHECKING = False  # the typing machinery costs milliseconds at import; type checkers read this as usual
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    F = TypeVar("F", bound=Callable[[], object])


class ForkInfo(
    namedtuple(
        "ForkInfo",
        "pid parent_pid generation is_child kind live_contexts detected_by feature_changes hook_errors"
        " fork_mode exit_mode fork_warnings",
        defaults=(None, None, (), 0, "allow", "none", 0),
    )
):
    """Where this process stands in forkguard's view of the fork tree.

    - ``pid``; ``parent_pid``: the process it was forked from (None in the
      process that imported forkguard);
    - ``generation``: fork depth below the process that imported forkguard (0 there);
    - ``is_child``; ``kind``: "early" (no context live at the fork), "late", or None;
    - ``live_contexts``: {name: count} over all threads at the instant of the fork;
    - ``detected_by``: "os.fork" (CPython's at-fork hook) or "check_fork" (a libc-level fork);
    - ``feature_changes``: a :class:`FeatureChange` per feature;
    - ``hook_errors``: hook and feature-callback exceptions logged in this process;
    - ``fork_mode``, ``exit_mode``: the policies in force (see :func:`set_fork_mode`);
    - ``fork_warnings``: forks this process made under the ``warn`` fork mode.
    """

    __slots__ = ()


# What the child step learned: [generation, detected_by, live_contexts,
# feature_changes]. One list written once per new process: after a fork every
# object Python writes costs a copy-on-write page fault, so the child step
# writes few objects and ForkInfo is only built when asked for.
_NO_CONTEXTS: dict[str, int] = {}
_state: list = [0, None, _NO_CONTEXTS, ()]


def _child_step(via: str) -> None:
    """Run once in each new process: decide the fork kind, apply features, run child hooks.

    Every function called and object written here costs copy-on-write page
    faults in each child, so empty phases are skipped before any call.
    """
    if _context._thread_counts:
        live = _context.live_contexts()
        _context.drop_inherited_threads()
    else:
        live = _NO_CONTEXTS
    state = _state
    state[0] += 1
    state[1], state[2], state[3] = via, live, ()
    feature_error = None
    if _features._features:
        state[3], feature_error = _features.apply_fork_policies(live)
    if registry.after_in_child:
        registry.run("after_in_child")
    if feature_error is not None:
        registry.raise_if_strict(feature_error)


def _before_fork() -> None:
    _process.check_fork()  # a libc-forked process settles its own identity before forking again
    if registry.before:
        registry.run("before")


def _after_fork_in_child() -> None:
    if _process.adopt_after_os_fork():
        _child_step("os.fork")


def _after_fork_in_parent() -> None:
    if registry.after_in_parent:
        registry.run("after_in_parent")


_process.set_new_process_handler(_child_step)
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def fork_info() -> ForkInfo:
    """This process's fork record: generation, parent, early or late, what changed and why."""
    _process.check_fork()
    generation, via, live, changes = _state
    return ForkInfo(
        pid=_process.current_pid(),
        parent_pid=_process.parent_pid(),
        generation=generation,
        is_child=generation > 0,
        kind=("late" if live else "early") if generation else None,
        live_contexts=dict(live),
        detected_by=via,
        feature_changes=changes,
        hook_errors=registry.errors,
        fork_mode=_policy.fork_mode()["mode"],
        exit_mode=_policy.exit_mode()["mode"],
        fork_warnings=_policy.fork_warnings(),
    )


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
