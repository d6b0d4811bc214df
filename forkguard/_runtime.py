"""What happens at a fork: the dispatchers given to ``os.register_at_fork`` and the child step.

The child step runs exactly once in every new process, whether CPython saw the
fork (its ``after_in_child`` hook) or a later :func:`check_fork` found it (libc
``fork()`` from C or ``ctypes``). It decides everything from the memory the
child inherited: the fork kind from the context counters of all threads, then
each feature's policy, then the user's ``after_in_child`` hooks.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple

from . import _context, _exitmode, _features, _policy, _process
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
        " fork_mode exit_mode fork_warnings nested_forks",
        defaults=(None, None, (), 0, "allow", "none", 0, 0),
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
    - ``fork_warnings``: forks this process made under the ``warn`` fork mode;
    - ``nested_forks``: forks this process made from inside a forkguard hook (no hook ran for them).
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
        _context.drop_inherited_threads(
            _process.fork_thread() if _process.greenlets_patched() else _process.forker())
    else:
        live = _NO_CONTEXTS
    state = _state
    state[0] += 1
    state[1], state[2], state[3] = via, live, ()
    if registry.running_in is not None and registry.in_hook():
        return  # forked from inside a hook: no hook runs for this fork (see _before_fork)
    if _gevent[0] and via == "os.fork":
        # gevent's fork re-initialises its hub (and threadpool) only after the
        # at-fork hooks: features' callbacks and child hooks wait for that (the
        # reinit wrapper runs them; no application code runs in between).
        _gevent[1] = live
        return
    _finish_child_step(live)


def _finish_child_step(live: dict[str, int]) -> None:
    """Apply features' fork policies and run the after_in_child hooks (the part that may use the hub)."""
    feature_error = None
    if _features._features:
        _state[3], feature_error = _features.apply_fork_policies(live)
    if registry.after_in_child:
        registry.run("after_in_child")
    if feature_error is not None:
        registry.raise_if_strict(feature_error)


# [gevent's fork_gevent is making the fork in progress (set in the parent, inherited),
#  the live contexts of a child step that waits for gevent's reinit()].
_gevent: list = [False, None]


def waiting_for_gevent() -> bool:
    """In a child made by gevent's fork: whether its hooks still wait for gevent's reinit()."""
    return _gevent[1] is not None


def made_by_gevent() -> bool:
    """Whether gevent's fork made this process (its child step finished after gevent's reinit())."""
    return bool(_gevent[0])


def _wrap_gevent_reinit(gevent_os) -> None:  # type: ignore[no-untyped-def]
    """Make ``gevent.os``'s ``reinit`` (what its fork calls in the child) finish forkguard's child step after it."""
    original = gevent_os.reinit
    if getattr(original, "_forkguard_wraps", None) is not None:
        return

    def reinit(*args, **kwargs):  # type: ignore[no-untyped-def]
        original(*args, **kwargs)
        live, _gevent[1] = _gevent[1], None
        if live is not None:
            _finish_child_step(live)

    reinit._forkguard_wraps = original  # type: ignore[attr-defined]
    gevent_os.reinit = reinit


# Whether stdout and stderr are flushed before every fork (set_flush_stdio).
_flush_stdio = [True]


def _before_fork() -> None:
    _process.check_fork()  # a libc-forked process settles its own identity before forking again
    if registry.running_in is not None and registry.in_hook():
        # A hook is forking: running the hooks again would recurse (a `before`
        # hook that forks would fork again, ~250 levels deep). Count it instead.
        registry.count_nested_fork()
        _process._resumes_forking_code[0] = True
        return
    callers = _forking_callers() if "multiprocessing.popen_fork" in sys.modules or "gevent.os" in sys.modules else ()
    _process._resumes_forking_code[0] = "multiprocessing" not in callers
    _gevent[0] = "gevent" in callers
    if _gevent[0]:
        _wrap_gevent_reinit(sys.modules["gevent.os"])
    if _policy._fork.mode == "deny":
        _policy.deny_went_around()
    if registry.before:
        registry.run("before")
    if _flush_stdio[0]:
        _flush_standard_streams()


def _forking_callers() -> set[str]:
    """Who is making this fork: "multiprocessing" (its child never returns to the forking code), "gevent"
    (its fork re-initialises the hub in the child after the at-fork hooks)."""
    codes = {}
    popen_fork, gevent_os = sys.modules.get("multiprocessing.popen_fork"), sys.modules.get("gevent.os")
    launch = getattr(getattr(popen_fork, "Popen", None), "_launch", None)
    if launch is not None:
        codes[launch.__code__] = "multiprocessing"
    for name in ("fork_gevent", "forkpty_gevent"):
        function = getattr(gevent_os, name, None)
        if function is not None:
            codes[function.__code__] = "gevent"
    found = set()
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code in codes:
            found.add(codes[frame.f_code])
        frame = frame.f_back
    return found


def _flush_standard_streams() -> None:
    """Push out stdout's and stderr's buffers, or the child would write the same bytes again at its exit."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            pass  # None (pythonw, closed), a broken pipe, or closed: nothing to duplicate


def _after_fork_in_child() -> None:
    if _policy._fork.went_around:
        os._exit(_policy.DENIED_CHILD_STATUS)  # a fork under 'deny' that nothing could stop: this child ends now
    if _process.adopt_after_os_fork():
        _child_step("os.fork")


def _after_fork_in_parent() -> None:
    _policy._fork.went_around = False
    if registry.after_in_parent and not (registry.running_in is not None and registry.in_hook()):
        registry.run("after_in_parent")


def set_flush_stdio(enabled: bool) -> None:
    """Flush ``sys.stdout`` and ``sys.stderr`` before every fork Python makes (the default), or not.

    Without it, output still buffered at the fork is written by the parent and
    again by the child. Turn it off only where a flush could block the fork (a
    full pipe nobody reads) and nothing is printed before forking.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"forkguard.set_flush_stdio: enabled must be True or False, not {enabled!r}")
    _flush_stdio[0] = enabled


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
        exit_mode=_exitmode.exit_mode()["mode"],
        fork_warnings=_policy.fork_warnings(),
        nested_forks=registry.nested_forks,
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
