"""Fork modes (may this process fork, and how) and exit modes (what happens to its children).

Fork modes, after seed 003's library OS:

- ``allow``: the default, nothing changes.
- ``warn``: every fork Python makes is logged with the caller's stack and counted.
- ``deny``: ``os.fork()`` and ``os.forkpty()`` raise ``OSError(ENOTSUP)`` before
  anything happens; with ``deny_exec=True`` so do ``subprocess``, ``os.posix_spawn``
  and ``os.system``.
- ``wait_for_exit_exec``: the parent's fork returns only once the child has
  exec'd or exited. The child holds the write end of a close-on-exec pipe; the
  parent reads to EOF, which comes exactly when the kernel closes that end.

Exit modes: ``kill_children`` (SIGTERM, a grace period, SIGKILL, reap) and
``wait_for_children`` (optionally every descendant, as a child subreaper), run
at interpreter exit and on SIGTERM.

Nothing here is imported work until a mode is set: no wrapper, no hook, no
handler.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

from . import _env, _log, _process
from ._hooks import registry

FORK_MODES = ("allow", "warn", "deny", "wait_for_exit_exec")
EXIT_MODES = ("none", "kill_children", "wait_for_children")
ON_TIMEOUT = ("warn", "kill")

# include/uapi/linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_real = {"fork": os.fork, "forkpty": os.forkpty}


class _ForkPolicy:
    """The fork mode in force and its options."""

    def __init__(self) -> None:
        self.mode = "allow"
        self.timeout: float | None = None
        self.on_timeout = "warn"
        self.deny_exec = False
        self.warnings = (_process.current_pid(), 0)  # (pid, count): a child starts from 0 lazily
        self.warn_hook = None
        self.exec_pipe: int | None = None  # in a waited-for child: its end of the parent's pipe
        self.pipe_hook = False
        self.saved_exec: dict[tuple[object, str], object] = {}


class _ExitPolicy:
    """The exit mode in force and its options."""

    def __init__(self) -> None:
        self.mode = "none"
        self.grace = 5.0
        self.timeout: float | None = None
        self.descendants = False
        self.pdeathsig = 0
        self.registered: object = None  # the before-fork hook that keeps the atexit handler first
        self.previous_sigterm: object = None
        self.pdeathsig_hook = None
        self.prctl = None


_fork = _ForkPolicy()
_exit = _ExitPolicy()


# ---------------------------------------------------------------------------- fork modes


def set_fork_mode(
    mode: str,
    *,
    timeout: float | None = None,
    on_timeout: str = "warn",
    deny_exec: bool = False,
) -> None:
    """Choose how this process may fork: ``allow``, ``warn``, ``deny`` or ``wait_for_exit_exec``.

    ``timeout`` and ``on_timeout`` ("warn" or "kill") apply to
    ``wait_for_exit_exec``; ``deny_exec`` to ``deny``. Everything is checked
    before anything changes.
    """
    timeout = _check_fork_mode(mode, timeout=timeout, on_timeout=on_timeout, deny_exec=deny_exec)
    _fork.mode, _fork.timeout, _fork.on_timeout, _fork.deny_exec = mode, timeout, on_timeout, deny_exec
    if mode == "wait_for_exit_exec" and not _fork.pipe_hook:
        registry.add({"after_in_child": _close_inherited_exec_pipe}, priority=2**31)
        _fork.pipe_hook = True
    _install_fork_wrappers(mode in ("deny", "wait_for_exit_exec"))
    _install_exec_guards(deny_exec)
    if mode == "warn" and _fork.warn_hook is None:
        _fork.warn_hook = registry.add({"before": _warn_before_fork}, priority=-(2**31))
    elif mode != "warn" and _fork.warn_hook is not None:
        registry.remove(_fork.warn_hook)
        _fork.warn_hook = None


def _check_fork_mode(mode: str, *, timeout: float | None = None, on_timeout: str = "warn",
                     deny_exec: bool = False) -> float | None:
    """Validate set_fork_mode's arguments; return the timeout as a float."""
    where = "forkguard.set_fork_mode"
    _check_choice("fork mode", mode, FORK_MODES, where)
    _check_choice("on_timeout", on_timeout, ON_TIMEOUT, where)
    seconds = None if timeout is None else _env.check_seconds(timeout, "timeout", where)
    if not isinstance(deny_exec, bool):
        raise TypeError(f"{where}: deny_exec must be True or False, not {deny_exec!r}")
    if mode != "wait_for_exit_exec" and (seconds is not None or on_timeout != "warn"):
        raise ValueError(f"{where}: timeout and on_timeout apply only to 'wait_for_exit_exec', not {mode!r}")
    if mode != "deny" and deny_exec:
        raise ValueError(f"{where}: deny_exec applies only to 'deny', not {mode!r}")
    return seconds


def fork_mode() -> dict[str, object]:
    """The fork mode in force and its options, as plain data."""
    return {"mode": _fork.mode, "timeout": _fork.timeout, "on_timeout": _fork.on_timeout,
            "deny_exec": _fork.deny_exec}


def fork_warnings() -> int:
    """How many forks this process made under ``warn`` (its children start from 0)."""
    pid, count = _fork.warnings
    return count if pid == _process.current_pid() else 0


def _install_fork_wrappers(on: bool) -> None:
    # os.fork is replaced rather than hooked: an at-fork hook cannot stop a fork
    # (CPython only reports its exception) and is not told the child's pid.
    for name, wrapper in (("fork", _guarded_fork), ("forkpty", _guarded_forkpty)):
        current = getattr(os, name)
        if on and current is _real[name]:
            setattr(os, name, wrapper)
        elif not on and current is wrapper:
            setattr(os, name, _real[name])


def _denied(what: str) -> OSError:
    return OSError(errno.ENOTSUP, f"{what} denied by forkguard (fork mode 'deny'); allow it with "
                                  "forkguard.set_fork_mode('allow') or FORKGUARD_FORK_MODE=allow")


def _guarded_fork() -> int:
    """``os.fork`` under a ``deny`` or ``wait_for_exit_exec`` mode."""
    if _fork.mode == "deny":
        raise _denied("fork()")
    if _fork.mode == "wait_for_exit_exec":
        return _fork_and_wait(_real["fork"])  # type: ignore[return-value]
    return _real["fork"]()


def _guarded_forkpty() -> tuple[int, int]:
    """``os.forkpty`` under a ``deny`` or ``wait_for_exit_exec`` mode."""
    if _fork.mode == "deny":
        raise _denied("forkpty()")
    if _fork.mode == "wait_for_exit_exec":
        return _fork_and_wait(_real["forkpty"])  # type: ignore[return-value]
    return _real["forkpty"]()


def _fork_and_wait(real_fork):  # type: ignore[no-untyped-def]
    """Fork, and in the parent return only once the child has exec'd or exited."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        result = real_fork()
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        raise
    pid = result if isinstance(result, int) else result[0]
    if pid == 0:
        # The child keeps the write end; close-on-exec, so the kernel closes it
        # at exec (or at exit), and that is the parent's EOF.
        os.close(read_end)
        _fork.exec_pipe = write_end
        return result
    os.close(write_end)
    try:
        finished = _read_to_eof(read_end, _fork.timeout)
    finally:
        os.close(read_end)
    if finished:
        return result
    if _fork.on_timeout == "kill":
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if not isinstance(result, int):
            os.close(result[1])
        raise TimeoutError(errno.ETIMEDOUT, f"forkguard: child {pid} neither exec'd nor exited within "
                                            f"{_fork.timeout:g} s (fork mode 'wait_for_exit_exec'); it was killed")
    _log.warning("child %d has neither exec'd nor exited after %g s; fork returns without waiting longer "
                 "(fork mode 'wait_for_exit_exec')", pid, _fork.timeout)
    return result


def _read_to_eof(fd: int, timeout: float | None) -> bool:
    """Read ``fd`` until EOF; False if ``timeout`` seconds pass first."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not poller.poll(None if remaining is None else remaining * 1000):
            return False
        if not os.read(fd, 4096):
            return True


def _close_inherited_exec_pipe() -> None:
    # A grandchild must not hold its parent's pipe end: the grandparent would
    # then wait for the grandchild's exec too.
    if _fork.exec_pipe is not None:
        try:
            os.close(_fork.exec_pipe)
        except OSError:
            pass
        _fork.exec_pipe = None


def _warn_before_fork() -> None:
    import traceback

    pid, count = _fork.warnings
    count = count + 1 if pid == _process.current_pid() else 1
    _fork.warnings = (_process.current_pid(), count)
    package = os.path.dirname(__file__)
    frames = [f for f in traceback.extract_stack() if not f.filename.startswith(package)]
    _log.warning("fork #%d of process %d (fork mode 'warn'), called from:\n%s", count, os.getpid(),
                 "".join(traceback.format_list(frames)).rstrip())


# Process creation that execs at once, denied only with deny_exec=True.
def _exec_targets() -> list[tuple[object, str]]:
    import _posixsubprocess

    targets = [(_posixsubprocess, "fork_exec"), (os, "posix_spawn"), (os, "posix_spawnp"), (os, "system")]
    if "subprocess" in sys.modules:
        # subprocess binds `from _posixsubprocess import fork_exec` at its import;
        # a later import picks up the patched module attribute instead.
        targets.append((sys.modules["subprocess"], "_fork_exec"))
    return targets


def _install_exec_guards(on: bool) -> None:
    if on and not _fork.saved_exec:
        for owner, name in _exec_targets():
            if hasattr(owner, name):
                _fork.saved_exec[(owner, name)] = getattr(owner, name)
                setattr(owner, name, _exec_denier(name))
    elif not on and _fork.saved_exec:
        for (owner, name), original in _fork.saved_exec.items():
            setattr(owner, name, original)
        _fork.saved_exec.clear()


def _exec_denier(name: str):  # type: ignore[no-untyped-def]
    def denied(*args: object, **kwargs: object) -> object:
        raise _denied(f"{name}() (fork+exec)")

    denied.__name__ = name
    return denied


# ---------------------------------------------------------------------------- exit modes


def set_exit_mode(
    mode: str,
    *,
    grace: float = 5.0,
    timeout: float | None = None,
    descendants: bool = False,
    pdeathsig: bool | int = False,
) -> None:
    """Choose what happens to this process's children when it exits.

    ``kill_children``: SIGTERM, then SIGKILL after ``grace`` seconds, then reap.
    ``wait_for_children``: wait for them (every descendant with
    ``descendants=True``), then the kill path after ``timeout`` seconds if given.
    ``pdeathsig``: each child also asks the kernel for SIGKILL (or the signal
    given) when the forking *thread* dies, which covers a parent killed by SIGKILL.
    Call it from the main thread: it installs a SIGTERM handler.
    """
    grace, timeout, death_signal = _check_exit_mode(  # type: ignore[assignment]
        mode, grace=grace, timeout=timeout, descendants=descendants, pdeathsig=pdeathsig)
    _install_sigterm_handler(mode != "none", "forkguard.set_exit_mode")  # the one step that can fail: first

    _exit.mode, _exit.grace, _exit.timeout, _exit.descendants = mode, grace, timeout, descendants
    if descendants:
        _prctl()(PR_SET_CHILD_SUBREAPER, 1)
    if mode != "none" and not _exit.registered:
        _exit.registered = registry.add({"before": _run_exit_mode_first}, priority=2**31)
        _run_exit_mode_first()
    _exit.pdeathsig = death_signal
    if death_signal and _exit.pdeathsig_hook is None:
        _prctl()  # load libc in the parent, not in every child
        _exit.pdeathsig_hook = registry.add({"after_in_child": _ask_for_death_signal}, priority=2**31 - 1)
    elif not death_signal and _exit.pdeathsig_hook is not None:
        registry.remove(_exit.pdeathsig_hook)
        _exit.pdeathsig_hook = None


def _check_exit_mode(mode: str, *, grace: float = 5.0, timeout: float | None = None, descendants: bool = False,
                     pdeathsig: bool | int = False) -> tuple[float, float | None, int]:
    """Validate set_exit_mode's arguments; return grace, timeout and the death signal number."""
    where = "forkguard.set_exit_mode"
    _check_choice("exit mode", mode, EXIT_MODES, where)
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
    return seconds, timeout, death_signal  # type: ignore[return-value]


def exit_mode() -> dict[str, object]:
    """The exit mode in force and its options, as plain data."""
    return {"mode": _exit.mode, "grace": _exit.grace, "timeout": _exit.timeout,
            "descendants": _exit.descendants, "pdeathsig": _exit.pdeathsig}


# Signals whose default action does not end a process (signal(7)): as a death
# signal they would leave orphans running (SIGCHLD, SIGURG, SIGWINCH) or
# stopped (SIGSTOP and friends) instead of gone.
_NOT_DEADLY = frozenset(int(getattr(signal, name)) for name in (
    "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGWINCH") if hasattr(signal, name))


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
        raise ValueError(f"{where}: pdeathsig {value!r} is not a signal number (1 to {signal.SIGRTMAX})")
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


def _ask_for_death_signal() -> None:
    """In each child: die with the parent (PR_SET_PDEATHSIG), even if it died already."""
    _exit.prctl(PR_SET_PDEATHSIG, _exit.pdeathsig)
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
        _exit.previous_sigterm = current
    elif not on and current is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM with no handler of the application's: run the exit mode, then die of SIGTERM."""
    _run_exit_mode()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _run_exit_mode_first() -> None:
    """(Re-)register the exit handler so it runs before every atexit handler registered earlier.

    atexit runs the last registered first. multiprocessing's handler joins its
    children, which would wait forever for children this mode is to kill, so
    before each fork (a child is about to exist) ours moves to the front.
    """
    import atexit

    atexit.unregister(_run_exit_mode)
    atexit.register(_run_exit_mode)


def _run_exit_mode() -> None:
    if _exit.mode == "kill_children":
        kill_children(_exit.grace)
    elif _exit.mode == "wait_for_children":
        wait_for_children(_exit.timeout, _exit.grace)


def child_pids() -> list[int]:
    """Pids of this process's live (or zombie) children, read from /proc."""
    from ._procfs import children

    return children().get(os.getpid(), [])


def kill_children(grace: float = 5.0) -> list[int]:
    """SIGTERM every child, SIGKILL those alive after ``grace`` seconds, reap all; return their pids."""
    pids = child_pids()
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    pending = set(pids)
    deadline = time.monotonic() + grace
    while pending:
        pending = {pid for pid in pending if not _reaped(pid)}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    for pid in pending:
        _signal(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return pids


def wait_for_children(timeout: float | None = None, grace: float = 5.0) -> None:
    """Wait until this process has no children (orphans adopted as a subreaper included).

    After ``timeout`` seconds the rest get the kill path.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            if deadline is None:
                os.waitpid(-1, 0)
                continue
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                kill_children(grace)
                return
            time.sleep(0.01)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not ours to reap, or reaped elsewhere
    return done != 0


# ---------------------------------------------------------------------------- validation and environment


def _check_choice(what: str, value: object, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ValueError(f"{where}: {value!r} is not a valid {what}; use one of {', '.join(choices)}")


class EnvOption:
    """One FORKGUARD_* policy variable and the ``forkguard run`` option that sets it."""

    def __init__(self, variable: str, flag: str, target: str, keyword: str, parse, help: str) -> None:  # type: ignore[no-untyped-def]
        self.variable, self.flag, self.target, self.keyword = variable, flag, target, keyword
        self.parse, self.help = parse, help


def _parse_pdeathsig(raw: str) -> bool | int:
    if raw.isdigit() and int(raw) > 1:
        return int(raw)
    return _env.parse_bool(raw)


ENV_OPTIONS = (
    EnvOption("FORKGUARD_FORK_MODE", "--fork-mode", "fork", "mode",
              lambda raw: _env.parse_choice(raw, FORK_MODES), "fork mode: " + ", ".join(FORK_MODES)),
    EnvOption("FORKGUARD_FORK_TIMEOUT", "--fork-timeout", "fork", "timeout", _env.parse_seconds,
              "seconds wait_for_exit_exec waits for the child's exec or exit"),
    EnvOption("FORKGUARD_FORK_ON_TIMEOUT", "--fork-on-timeout", "fork", "on_timeout",
              lambda raw: _env.parse_choice(raw, ON_TIMEOUT), "after that timeout: warn (default) or kill"),
    EnvOption("FORKGUARD_DENY_EXEC", "--deny-exec", "fork", "deny_exec", _env.parse_bool,
              "1: under deny, refuse subprocess, posix_spawn and os.system too"),
    EnvOption("FORKGUARD_EXIT_MODE", "--exit-mode", "exit", "mode",
              lambda raw: _env.parse_choice(raw, EXIT_MODES), "exit mode: " + ", ".join(EXIT_MODES)),
    EnvOption("FORKGUARD_EXIT_GRACE", "--exit-grace", "exit", "grace", _env.parse_seconds,
              "seconds between SIGTERM and SIGKILL for children (default 5)"),
    EnvOption("FORKGUARD_EXIT_TIMEOUT", "--exit-timeout", "exit", "timeout", _env.parse_seconds,
              "seconds wait_for_children waits before killing"),
    EnvOption("FORKGUARD_EXIT_DESCENDANTS", "--exit-descendants", "exit", "descendants", _env.parse_bool,
              "1: wait_for_children waits for every descendant (child subreaper)"),
    EnvOption("FORKGUARD_PDEATHSIG", "--pdeathsig", "exit", "pdeathsig", _parse_pdeathsig,
              "1 (SIGKILL) or a signal number: each child dies with the thread that forked it"),
)


def policy_from_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, dict[str, object]]:
    """Parse the FORKGUARD_* policy variables; ValueError naming the variable when one is wrong."""
    settings: dict[str, dict[str, object]] = {"fork": {}, "exit": {}}
    for option in ENV_OPTIONS:
        raw = environ.get(option.variable, "").strip()
        if raw:
            try:
                settings[option.target][option.keyword] = option.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{option.variable}={raw!r}: {exc}") from None
    return settings


def check_policy(settings: dict[str, dict[str, object]]) -> None:
    """Refuse settings that set_fork_mode / set_exit_mode would refuse, without applying any."""
    fork, exit = dict(settings["fork"]), dict(settings["exit"])
    _check_fork_mode(fork.pop("mode", "allow"), **fork)  # type: ignore[arg-type]
    _check_exit_mode(exit.pop("mode", "none"), **exit)  # type: ignore[arg-type]


def apply_environment() -> None:
    """Apply the FORKGUARD_* policy variables, all checked before any is applied."""
    settings = policy_from_environment(os.environ)
    if not settings["fork"] and not settings["exit"]:
        return
    try:
        check_policy(settings)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{exc} (from the FORKGUARD_* environment)") from None
    fork, exit = dict(settings["fork"]), dict(settings["exit"])
    if fork:
        set_fork_mode(fork.pop("mode", "allow"), **fork)  # type: ignore[arg-type]
    if exit:
        set_exit_mode(exit.pop("mode", "none"), **exit)  # type: ignore[arg-type]
