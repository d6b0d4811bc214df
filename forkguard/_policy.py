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

Exit modes live in ``_exitmode``; the wrappers here also record the children
forked through Python for them. Both are read from the FORKGUARD_* variables here.

Nothing here is imported work until a mode is set: no wrapper, no hook, no
handler.
"""

from __future__ import annotations

import _thread
import errno
import os
import signal
import sys
import time

from . import _env, _exitmode, _log, _process
from ._exitmode import EXIT_MODES, set_exit_mode
from ._hooks import registry

FORK_MODES = ("allow", "warn", "deny", "wait_for_exit_exec")
ON_TIMEOUT = ("warn", "kill")



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
        self.went_around = False  # the fork in progress went around the wrapper under 'deny' (see below)
        self.in_wrapper: int | None = None  # the thread inside forkguard's fork wrapper (there can be two,
        # one around gevent's fork and one inside it: the outer one acts)


_fork = _ForkPolicy()


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
    refresh_wrappers()
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
    """The fork mode in force and its options, as plain data.

    ``kernel`` is ``{"deny_exec": bool}`` while the kernel rule of ``forkguard
    run --fork-mode deny`` holds this process (the kernel is asked, not the
    environment), else None; it outlasts any later ``set_fork_mode``.
    """
    from . import _seccomp

    return {"mode": _fork.mode, "timeout": _fork.timeout, "on_timeout": _fork.on_timeout,
            "deny_exec": _fork.deny_exec, "kernel": _seccomp.active_rule()}


def fork_warnings() -> int:
    """How many forks this process made under ``warn`` (its children start from 0)."""
    pid, count = _fork.warnings
    return count if pid == _process.current_pid() else 0


def refresh_wrappers() -> None:
    """Put forkguard's wrappers around os.fork and the spawn calls where a mode needs them, and only there."""
    _install_fork_wrappers(_fork.mode in ("deny", "wait_for_exit_exec") or _exitmode.recording())
    _install_exec_guards(_fork.deny_exec or _exitmode.recording())


def _fork_targets() -> list[tuple[object, str]]:
    """Where a fork can be asked for: os.fork and os.forkpty, and gevent's own reference to the real
    ones (``gevent.os`` keeps them from its import on, and its patched os.fork calls those)."""
    targets: list[tuple[object, str]] = [(os, "fork"), (os, "forkpty")]
    gevent_os = sys.modules.get("gevent.os")
    if gevent_os is not None:
        targets += [(gevent_os, "_raw_fork"), (gevent_os, "_raw_forkpty")]
    return [(owner, name) for owner, name in targets if hasattr(owner, name)]


def _install_fork_wrappers(on: bool) -> None:
    # os.fork is replaced rather than hooked: an at-fork hook cannot stop a fork
    # (CPython only reports its exception) and is not told the child's pid.
    # Whatever is there is wrapped (gevent's os.fork too), and put back as it was.
    for owner, name in _fork_targets():
        current = getattr(owner, name)
        wrapped = getattr(current, "_forkguard_wraps", None)
        if on and wrapped is None:
            setattr(owner, name, _fork_wrapper(current, name))
        elif not on and wrapped is not None:
            setattr(owner, name, wrapped)


def _denied(what: str) -> OSError:
    return OSError(errno.ENOTSUP, f"{what} denied by forkguard (fork mode 'deny'); allow it with "
                                  "forkguard.set_fork_mode('allow') or FORKGUARD_FORK_MODE=allow")


# What a child made by a fork that went around 'deny' exits with, at once (EX_OSERR).
DENIED_CHILD_STATUS = 71


def deny_went_around() -> None:
    """A fork reached os.fork's own hooks under 'deny': something replaced os.fork after the mode was set.

    Said loudly, the fork's child ends at once, and what is there now is wrapped,
    so that the next fork is refused as promised.
    """
    import traceback

    _fork.went_around = True
    _install_fork_wrappers(True)
    package = os.path.dirname(__file__)
    frames = [f for f in traceback.extract_stack() if not f.filename.startswith(package)]
    _log.error("fork() under fork mode 'deny' went around forkguard's wrapper (os.fork was replaced after "
               "set_fork_mode, by gevent's monkey.patch_all() for instance): its child is stopped at once with "
               "status %d, and the replacement is wrapped now. Set the fork mode after patching. Called from:\n%s",
               DENIED_CHILD_STATUS, "".join(traceback.format_list(frames)).rstrip())


def _fork_wrapper(original, name: str):  # type: ignore[no-untyped-def]
    """``original`` (a fork or forkpty) under ``deny`` or ``wait_for_exit_exec``, its children recorded for exit
    modes. Nested wrappers (ours around gevent's fork around ours) act once, in the outermost."""
    def fork():  # type: ignore[no-untyped-def]
        me = _thread.get_ident()
        if _fork.in_wrapper == me:
            return original()
        if _fork.mode == "deny":
            raise _denied(f"{name.lstrip('_').replace('raw_', '')}()")
        _fork.in_wrapper = me
        try:
            result = _fork_and_wait(original) if _fork.mode == "wait_for_exit_exec" else original()
        finally:
            _fork.in_wrapper = None  # in the child too: its own forks are wrapped again
        pid = result if isinstance(result, int) else result[0]
        if pid:
            _exitmode.record_child(pid)
        return result

    fork.__name__ = fork.__qualname__ = name
    fork._forkguard_wraps = original  # type: ignore[attr-defined]
    return fork


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
        # poll() takes a C int of milliseconds: a longer timeout is waited in turns.
        if not poller.poll(None if remaining is None else min(remaining * 1000, 2**31 - 1)):
            if remaining is not None and remaining * 1000 > 2**31 - 1:
                continue
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
                setattr(owner, name, _exec_wrapper(name, _fork.saved_exec[(owner, name)]))
    elif not on and _fork.saved_exec:
        for (owner, name), original in _fork.saved_exec.items():
            setattr(owner, name, original)
        _fork.saved_exec.clear()


def _exec_wrapper(name: str, original):  # type: ignore[no-untyped-def]
    """``original`` (a call that forks and execs) refused under deny_exec, its child recorded for exit modes."""
    def spawn(*args: object, **kwargs: object) -> object:
        if _fork.deny_exec:
            raise _denied(f"{name}() (fork+exec)")
        result = original(*args, **kwargs)
        if name != "system":  # the others return the child's pid; os.system waits for its child itself
            _exitmode.record_child(result)  # type: ignore[arg-type]
        return result

    spawn.__name__ = name
    return spawn


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
    """1/0 (true/false...) or a signal number in ASCII digits: str.isdigit() also accepts "²", which int() refuses."""
    digits = raw.strip()
    if digits.isascii() and digits.isdigit() and int(digits) > 1:
        return int(digits)
    try:
        return _env.parse_bool(raw)
    except ValueError:
        raise ValueError("not 1 (SIGKILL), 0 or a signal number") from None


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
    _exitmode.check_exit_mode(exit.pop("mode", "none"), **exit)  # type: ignore[arg-type]


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
