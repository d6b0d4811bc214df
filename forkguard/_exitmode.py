"""Exit modes (seed 003): what happens to this process's children when it exits.

- ``kill_children``: every descendant gets SIGTERM, then SIGKILL after a grace
  period, and this process reaps its children: none left alive, none a zombie.
- ``wait_for_children``: the process waits for its children (every descendant,
  as a child subreaper, with ``descendants=True``), then the kill path after
  ``timeout`` seconds.

Children are found in /proc (whatever made them) and, as a second source that
needs neither /proc nor a free descriptor, in the list of children forked
through Python here (``os.fork``, multiprocessing, ``subprocess``,
``posix_spawn``), recorded as they are made. The sweep runs first among the
atexit handlers (multiprocessing's would otherwise join children this mode is
to kill), on SIGTERM, and once more after every atexit handler has run, since
one registered earlier may fork.

A forked child gets SIGTERM's default action back: a child stuck in C never
returns to the interpreter to run a Python handler, and ``terminate()`` must
still end it.
"""

from __future__ import annotations

import atexit
import os
import signal
import time

from . import _env, _log, _process
from ._hooks import registry

EXIT_MODES = ("none", "kill_children", "wait_for_children")

# include/uapi/linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Signals whose default action does not end a process (signal(7)): as a death
# signal they would leave orphans running (SIGCHLD, SIGURG, SIGWINCH) or
# stopped (SIGSTOP and friends) instead of gone.
_NOT_DEADLY = frozenset(int(getattr(signal, name)) for name in (
    "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGWINCH") if hasattr(signal, name))


class _Reaper:
    """Finds, signals and reaps this process's children.

    It keeps every function it calls as an attribute: the last sweep runs while
    the interpreter tears its modules down, and module globals may already be
    gone by then.
    """

    def __init__(self) -> None:
        from . import _procfs  # now, not at exit: an import then may find no descriptor left

        self.children_by_parent = _procfs.children
        self.getpid, self.kill, self.waitpid, self.wnohang = os.getpid, os.kill, os.waitpid, os.WNOHANG
        self.monotonic, self.sleep = time.monotonic, time.sleep
        self.warn = _log.warning
        self.prctl = _prctl()
        self.sigterm, self.sigkill = int(signal.SIGTERM), int(signal.SIGKILL)
        self.owner = os.getpid()
        self.recorded: set[int] = set()  # children forked through Python by process `owner`
        self.blind_warned = False

    def record(self, pid: int) -> None:
        """Remember a child forked through Python (the list is per process: a child starts its own)."""
        if self.owner != self.getpid():
            self.owner, self.recorded = self.getpid(), set()
        self.recorded.add(pid)

    def recorded_children(self) -> list[int]:
        """Recorded pids that are still this process's children; a reaped one may belong to anyone now."""
        if self.owner != self.getpid():
            return []
        alive = []
        for pid in list(self.recorded):
            try:
                done = self.waitpid(pid, self.wnohang)[0]
            except ChildProcessError:
                done = pid
            if done:
                self.recorded.discard(pid)
            else:
                alive.append(pid)
        return alive

    def targets(self) -> list[int]:
        """Every live descendant (from /proc), plus the recorded children; parents first."""
        found = []
        try:
            by_parent = self.children_by_parent()
        except Exception as exc:  # no /proc, no descriptor left, or the interpreter tearing down
            if not self.blind_warned:
                self.blind_warned = True
                try:
                    self.warn("exit mode: cannot list children in /proc (%s); only the children forked through "
                              "Python here are covered", exc)
                except Exception:
                    pass
        else:
            queue = [self.getpid()]
            while queue:
                for child in by_parent.get(queue.pop(0), ()):
                    found.append(child)
                    queue.append(child)
        return found + [pid for pid in self.recorded_children() if pid not in found]

    def signal_all(self, pids: list[int], signum: int) -> None:
        for pid in pids:
            try:
                self.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def reap(self) -> bool:
        """Reap every exited child; True when this process has no child left at all."""
        while True:
            try:
                pid = self.waitpid(-1, self.wnohang)[0]
            except ChildProcessError:
                return True
            if not pid:
                return False

    def kill_all(self, grace: float) -> list[int]:
        """SIGTERM every descendant, SIGKILL what is left after ``grace`` seconds, reap; return the pids signalled."""
        pids = self.targets()
        if not pids:
            self.reap()
            return []
        # A grandchild whose parent dies of the SIGTERM comes to us rather
        # than to init, so that the SIGKILL below still finds it.
        self.prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.signal_all(pids, self.sigterm)
        deadline = self.monotonic() + grace
        while not self.reap() and self.monotonic() < deadline:
            if not [pid for pid in self.targets() if pid in pids]:
                break  # what is left is new since (an orphan adopted as subreaper): the kill below takes it
            self.sleep(0.01)
        # Listed again: a pid that died meanwhile may be someone else's now.
        self.signal_all(self.targets(), self.sigkill)
        deadline = self.monotonic() + 5  # SIGKILLed processes go at once; orphans may still be re-parented to us
        while not self.reap() and self.monotonic() < deadline:
            self.sleep(0.01)
        return pids

    def wait_all(self, timeout: float | None, grace: float) -> None:
        """Wait until no child is left; after ``timeout`` seconds the rest get the kill path."""
        deadline = None if timeout is None else self.monotonic() + timeout
        while True:
            try:
                pid = self.waitpid(-1, 0 if deadline is None else self.wnohang)[0]
            except ChildProcessError:
                return
            if pid == 0:
                if self.monotonic() >= deadline:  # type: ignore[operator]
                    self.kill_all(grace)
                    return
                self.sleep(0.01)


class _ExitPolicy:
    """The exit mode in force and its options."""

    def __init__(self) -> None:
        self.mode = "none"
        self.grace = 5.0
        self.timeout: float | None = None
        self.descendants = False
        self.pdeathsig = 0
        self.reaper: _Reaper | None = None
        self.registered: object = None  # the before-fork hook that keeps the atexit handler first
        self.child_hook: object = None
        self.prctl = None


_exit = _ExitPolicy()
_final_sweep = None  # a _FinalSweep once a mode is set; nothing else may refer to it (see there)


class _FinalSweep:
    """Runs the exit mode once more when the interpreter frees it, after every atexit handler.

    Only a module global holds it (no cycle), so it goes when this module's
    namespace is cleared at shutdown: the one point after atexit where Python
    still runs.
    A handler registered before ours may have forked meanwhile.
    """

    def __init__(self, policy: _ExitPolicy) -> None:
        self.policy = policy

    def __del__(self) -> None:
        # Attributes only: this module's globals may already be cleared.
        policy, reaper = self.policy, self.policy.reaper
        if reaper is None or reaper.owner != reaper.getpid():
            return
        if policy.mode == "kill_children":
            reaper.kill_all(policy.grace)
        elif policy.mode == "wait_for_children":
            reaper.wait_all(policy.timeout, policy.grace)


def _sweep(policy: _ExitPolicy) -> None:
    reaper = policy.reaper
    if reaper is None:
        return
    if policy.mode == "kill_children":
        reaper.kill_all(policy.grace)
    elif policy.mode == "wait_for_children":
        reaper.wait_all(policy.timeout, policy.grace)


def set_exit_mode(
    mode: str,
    *,
    grace: float = 5.0,
    timeout: float | None = None,
    descendants: bool = False,
    pdeathsig: bool | int = False,
) -> None:
    """Choose what happens to this process's children when it exits.

    ``kill_children``: SIGTERM to every descendant, then SIGKILL after ``grace``
    seconds, then reap. ``wait_for_children``: wait for them (every descendant
    with ``descendants=True``), then the kill path after ``timeout`` seconds if
    given. ``pdeathsig``: each child also asks the kernel for SIGKILL (or the
    signal given) when the forking *thread* dies, which covers a parent killed by
    SIGKILL. Call it from the main thread: it installs a SIGTERM handler.
    """
    grace, timeout, death_signal = check_exit_mode(  # type: ignore[assignment]
        mode, grace=grace, timeout=timeout, descendants=descendants, pdeathsig=pdeathsig)
    _install_sigterm_handler(mode != "none", "forkguard.set_exit_mode")  # the one step that can fail: first

    global _final_sweep
    if mode != "none" and _exit.reaper is None:
        _exit.reaper = _Reaper()
        _final_sweep = _FinalSweep(_exit)
    _exit.mode, _exit.grace, _exit.timeout, _exit.descendants = mode, grace, timeout, descendants
    if descendants:
        _prctl()(PR_SET_CHILD_SUBREAPER, 1)
    if mode != "none" and not _exit.registered:
        _exit.registered = registry.add({"before": _run_exit_mode_first}, priority=2**31)
        _run_exit_mode_first()
    if mode != "none" and _exit.child_hook is None:
        _exit.child_hook = registry.add({"after_in_child": _in_child}, priority=2**31 - 1)
    _exit.pdeathsig = death_signal
    if death_signal:
        _prctl()  # load libc in the parent, not in every child
    from . import _policy

    _policy.refresh_wrappers()  # record the children forked through Python


def check_exit_mode(mode: str, *, grace: float = 5.0, timeout: float | None = None, descendants: bool = False,
                    pdeathsig: bool | int = False) -> tuple[float, float | None, int]:
    """Validate set_exit_mode's arguments; return grace, timeout and the death signal number."""
    where = "forkguard.set_exit_mode"
    if mode not in EXIT_MODES:
        raise ValueError(f"{where}: {mode!r} is not a valid exit mode; use one of {', '.join(EXIT_MODES)}")
    seconds = _env.check_seconds(grace, "grace", where)
    timeout = None if timeout is None else _env.check_seconds(timeout, "timeout", where)
    if not isinstance(descendants, bool):
        raise TypeError(f"{where}: descendants must be True or False, not {descendants!r}")
    if descendants and mode != "wait_for_children":
        raise ValueError(f"{where}: descendants applies only to 'wait_for_children', not {mode!r}")
    if timeout is not None and mode != "wait_for_children":
        raise ValueError(f"{where}: timeout applies only to 'wait_for_children', not {mode!r}")
    death_signal = _check_death_signal(pdeathsig, where)
    if death_signal and mode == "none":
        raise ValueError(f"{where}: pdeathsig needs an exit mode, not 'none'")
    return seconds, timeout, death_signal


def exit_mode() -> dict[str, object]:
    """The exit mode in force and its options, as plain data."""
    return {"mode": _exit.mode, "grace": _exit.grace, "timeout": _exit.timeout,
            "descendants": _exit.descendants, "pdeathsig": _exit.pdeathsig}


def recording() -> bool:
    """Whether children forked through Python are being recorded (an exit mode is set)."""
    return _exit.mode != "none"


def record_child(pid: int) -> None:
    """Called by forkguard's fork and spawn wrappers in the parent with each new child's pid."""
    if _exit.reaper is not None and _exit.mode != "none":
        _exit.reaper.record(pid)


def _check_death_signal(value: bool | int, where: str) -> int:
    if value is True:
        return int(signal.SIGKILL)
    if value is False:
        return 0
    if not isinstance(value, int):
        raise TypeError(f"{where}: pdeathsig must be True, False or a signal number, not {type(value).__name__}")
    if value == 0:
        return 0
    if value not in {int(s) for s in signal.valid_signals()}:
        raise ValueError(f"{where}: pdeathsig {value!r} is not a signal number (1 to {int(signal.SIGRTMAX)})")
    if value in _NOT_DEADLY:
        raise ValueError(f"{where}: pdeathsig {signal.Signals(value).name} does not end a process; "
                         "use True (SIGKILL) or a signal such as SIGTERM")
    return int(value)


def _prctl():  # type: ignore[no-untyped-def]
    if _exit.prctl is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _exit.prctl = libc.prctl
    return _exit.prctl


def _in_child() -> None:
    """In each new child: SIGTERM's default action back, and the death signal if asked for."""
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:
            pass  # not the main thread: only a libc fork noticed by another thread gets here
    if _exit.pdeathsig:
        _exit.prctl(PR_SET_PDEATHSIG, _exit.pdeathsig)  # type: ignore[misc]
        # The parent may have died between fork() and prctl(): the kernel will
        # never send the signal then, so check who our parent is now.
        if os.getppid() != _process.parent_pid():
            os.kill(os.getpid(), _exit.pdeathsig)


def _install_sigterm_handler(on: bool, where: str) -> None:
    current = signal.getsignal(signal.SIGTERM)
    if on and current in (signal.SIG_DFL, None):
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:
            raise ValueError(f"{where}: call it from the main thread (it installs a SIGTERM handler)") from None
    elif not on and current is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM with no handler of the application's: run the exit mode, then die of SIGTERM."""
    _sweep(_exit)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _run_exit_mode_first() -> None:
    """(Re-)register the exit handler so it runs before every atexit handler registered earlier.

    atexit runs the last registered first. multiprocessing's handler joins its
    children, which would wait forever for children this mode is to kill, so
    before each fork (a child is about to exist) ours moves to the front.
    """
    atexit.unregister(_run_exit_mode)
    atexit.register(_run_exit_mode)


def _run_exit_mode() -> None:
    _sweep(_exit)


def child_pids() -> list[int]:
    """Pids of this process's live (or zombie) children, from /proc and the recorded ones."""
    from ._procfs import children

    return children().get(os.getpid(), [])


def kill_children(grace: float = 5.0) -> list[int]:
    """SIGTERM every descendant, SIGKILL those alive after ``grace`` seconds, reap; return the pids signalled."""
    return (_exit.reaper or _Reaper()).kill_all(_env.check_seconds(grace, "grace", "forkguard.kill_children"))
