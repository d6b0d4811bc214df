"""What a command starts, and whether forkguard can load into it; the guard that keeps child interpreters in.

``forkguard run`` puts a ``sitecustomize`` on PYTHONPATH. That takes effect
only in a Python interpreter that reads PYTHONPATH and imports ``site``: not
under ``-I`` or ``-E`` (PYTHONPATH ignored) or ``-S`` (no ``site``), whether
those come from the command line, a ``#!`` line (``#!/usr/bin/python3 -Es``)
or pip's ``#!/bin/sh`` launcher. Programs are recognised by what the file is:
an ELF executable that runs CPython's ``Py_BytesMain`` (a venv's ``python`` is a
link to one), a ``#!`` line naming one (directly or through ``env``), or pip's
launcher, followed to the interpreter it names. Never by the file's name.

Where the kernel rule does not hold the whole policy, a program forkguard
cannot load into would run without it. ``forkguard run`` refuses those up front;
in the program, :func:`install_exec_guard` refuses to start a child interpreter
that inherits the policy but could not apply it, and puts the autoload
directory back on a child's PYTHONPATH when the program replaced it.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import namedtuple

from ._env import python_options
from ._hooks import STRICT_ENV

AUTOLOAD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_autoload")

# Interpreter options after which the sitecustomize cannot load.
BLOCKING_OPTIONS = {
    "I": "-I (isolated mode) ignores PYTHONPATH",
    "E": "-E ignores PYTHONPATH",
    "S": "-S skips the site module, which imports sitecustomize",
}
_MAX_SCRIPT_DEPTH = 4  # the kernel follows at most this many #! interpreters (fs/exec.c)


class Launch(namedtuple("Launch", "path what python options main")):
    """What executing ``path`` runs.

    - ``what``: the file in words, for messages ("a Python interpreter", "a #!/bin/sh shell script");
    - ``python``: the Python interpreter that ends up running, or None;
    - ``options``: the interpreter's option letters, each with where it came from ("its #! line", "the command line");
    - ``main``: ("script", path), ("module", name), ("command", None) or ("stdin", None).
    """

    __slots__ = ()

    def blocked_by(self) -> str | None:
        """Why forkguard's sitecustomize cannot load into this Python program, or None when it can."""
        for letter, source in self.options:
            if letter in BLOCKING_OPTIONS:
                return f"{BLOCKING_OPTIONS[letter]} (given on {source})"
        return None


def inspect(path: str, argv: list[str], environ: dict[str, str], _depth: int = 0) -> Launch:
    """Describe what ``execve(path, argv)`` runs, following #! lines and pip's launcher as the kernel and sh would."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as exc:
        return Launch(path, f"unreadable ({exc.strerror})", None, (), None)
    if head.startswith(b"\x7fELF"):
        if not _runs_py_bytes_main(path):
            return Launch(path, "an ELF program that is not a Python interpreter", None, (), None)
        letters, main = python_options(argv[1:])
        return Launch(path, "a Python interpreter", path, tuple((x, "the command line") for x in letters), main)
    if not head.startswith(b"#!") or _depth >= _MAX_SCRIPT_DEPTH:
        return Launch(path, "neither an ELF program nor a #! script", None, (), None)
    lines = head.split(b"\n", 3)
    interpreter, argument = _shebang(lines[0])
    if interpreter == "/bin/sh" and not argument:
        launcher = _pip_launcher(lines[1:3])
        if launcher is None:
            return Launch(path, "a #!/bin/sh shell script", None, (), None)
        target, options = launcher
        inner = inspect(target, [target, *options, path, *argv[1:]], environ, _depth + 1)
        return _as_script(inner, f"pip's #!/bin/sh launcher for {target}", "its launcher line")
    words = [argument] if argument else []
    if os.path.basename(interpreter) == "env":
        words = argument[2:].split() if argument.startswith("-S") else words
        if not words or words[0].startswith("-") or "=" in words[0]:
            return Launch(path, f"a script run by env with options ({argument})", None, (), None)
        import shutil

        found = shutil.which(words[0], path=environ.get("PATH", os.defpath))
        if found is None:
            return Launch(path, f"a script whose #! interpreter {words[0]!r} is not on PATH", None, (), None)
        interpreter, words = found, words[1:]
    inner = inspect(interpreter, [interpreter, *words, path, *argv[1:]], environ, _depth + 1)
    line = os.fsdecode(lines[0].rstrip(b"\r"))
    return _as_script(inner, f"a script ({line})", "its #! line")


def _as_script(inner: Launch, what: str, source: str) -> Launch:
    """The interpreter a script runs, described as the script: every option it sets comes from ``source``."""
    if inner.python is None:
        return Launch(inner.path, f"{what} whose interpreter is {inner.what}", None, (), None)
    return Launch(inner.path, what, inner.python, tuple((x, source) for x, _ in inner.options), inner.main)


def _shebang(line: bytes) -> tuple[str, str]:
    """Interpreter and its one optional argument, split as fs/binfmt_script.c does."""
    body = line[2:255].strip(b" \t\r")
    for pos, char in enumerate(body):
        if char in b" \t":
            return os.fsdecode(body[:pos]), os.fsdecode(body[pos:].strip(b" \t"))
    return os.fsdecode(body), ""


def _pip_launcher(lines: list[bytes]) -> tuple[str, list[str]] | None:
    """The interpreter and options of pip's launcher, which runs the file itself as Python:

        #!/bin/sh
        '''exec' "/venv with space/bin/python" "$0" "$@"
        ' '''

    pip writes it when the interpreter's path has a space or is too long for a #! line.
    """
    if len(lines) < 2 or lines[1].rstrip(b"\r") != b"' '''" or not lines[0].startswith(b"'''exec' "):
        return None
    import shlex

    try:
        words = shlex.split(os.fsdecode(lines[0]))
    except ValueError:
        return None
    if len(words) < 4 or words[0] != "exec" or words[-2:] != ["$0", "$@"]:
        return None
    return words[1], words[2:-2]


def _runs_py_bytes_main(path: str) -> bool:
    """True for an ELF executable whose dynamic symbols name ``Py_BytesMain``: CPython ≥ 3.8's ``main``.

    The interpreter defines it (libpython linked in) or imports it from
    ``libpython3.X.so``; programs that embed Python (vim, gdb) call
    ``Py_Initialize`` instead, and never load a sitecustomize for a program.
    """
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[4] not in (1, 2) or ident[5] not in (1, 2):
                return False
            wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
            if wide:
                shoff, = struct.unpack_from(order + "Q", ident, 0x28)
                shentsize, shnum = struct.unpack_from(order + "HH", ident, 0x3A)
                layout = order + "4xI16xQQI"  # sh_type, sh_offset, sh_size, sh_link
            else:
                shoff, = struct.unpack_from(order + "I", ident, 0x20)
                shentsize, shnum = struct.unpack_from(order + "HH", ident, 0x2E)
                layout = order + "4xI8xIII"
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            sections = [struct.unpack_from(layout, table, i * shentsize)
                        for i in range(min(shnum, len(table) // max(shentsize, 1)))]
            for kind, _, _, link in sections:
                if kind == 11 and link < len(sections):  # SHT_DYNSYM; sh_link is its string table
                    _, offset, size, _ = sections[link]
                    f.seek(offset)
                    return b"\0Py_BytesMain\0" in b"\0" + f.read(min(size, 1 << 24))
    except (OSError, struct.error):
        pass
    return False


# ---------------------------------------------------------------------------- what the policy needs


def unheld_policy(settings: dict[str, dict[str, object]], strict_hooks: bool,
                  kernel_rule: dict[str, bool] | None) -> str | None:
    """The part of a FORKGUARD_* policy only forkguard inside Python can hold; None when there is none
    (nothing set, or the kernel rule holds it all).

    ``kernel_rule`` is the kernel rule in force (``{"deny_exec": bool}``) or None.
    """
    fork, exit = settings["fork"], settings["exit"]
    mode, deny_exec = fork.get("mode", "allow"), bool(fork.get("deny_exec", False))
    if exit.get("mode", "none") != "none":
        return f"exit mode {exit['mode']!r}"
    if strict_hooks:
        return "strict hooks"
    if mode == "allow" or (mode == "deny" and kernel_rule is not None and (kernel_rule["deny_exec"] or not deny_exec)):
        return None
    return f"fork mode {mode!r}"


# ---------------------------------------------------------------------------- the exec guard


def install_exec_guard() -> None:
    """Check each exec the program makes from Python (subprocess, os.exec*, os.posix_spawn*) for a child
    interpreter that inherits the policy but could not apply it.

    Installed before forkguard applies the policy, so forkguard's own wrappers
    (deny_exec, exit-mode recording) wrap these and put them back when removed.
    A shell or a C library that starts Python is out of its reach.
    """
    import _posixsubprocess

    real_fork_exec, real_execve = _posixsubprocess.fork_exec, os.execve
    real_execv, real_spawn, real_spawnp = os.execv, os.posix_spawn, os.posix_spawnp

    def fork_exec(*args):  # type: ignore[no-untyped-def]
        # (args, executable_list, close_fds, pass_fds, cwd, env, ...) from 3.10 to 3.13
        env = None if args[5] is None else dict(os.fsdecode(e).partition("=")[::2] for e in args[5])
        repaired = _child_env([os.fsdecode(p) for p in args[1]], args[0], env)
        if repaired is not None:
            args = (*args[:5], [os.fsencode(f"{k}={v}") for k, v in repaired.items()], *args[6:])
        return real_fork_exec(*args)

    def execv(path, argv):  # type: ignore[no-untyped-def]
        repaired = _child_env([_path(path)], argv, None)
        return real_execv(path, argv) if repaired is None else real_execve(path, argv, repaired)

    def execve(path, argv, env):  # type: ignore[no-untyped-def]
        repaired = _child_env([_path(path)], argv, dict(env))
        return real_execve(path, argv, env if repaired is None else repaired)

    # env=None (this process's environment) is accepted from 3.13, and subprocess passes it.
    def posix_spawn(path, argv, env, **kwargs):  # type: ignore[no-untyped-def]
        repaired = _child_env([_path(path)], argv, None if env is None else dict(env))
        return real_spawn(path, argv, env if repaired is None else repaired, **kwargs)

    def posix_spawnp(path, argv, env, **kwargs):  # type: ignore[no-untyped-def]
        import shutil

        found = shutil.which(_path(path)) if os.sep not in _path(path) else _path(path)
        repaired = _child_env([found] if found else [], argv, None if env is None else dict(env))
        return real_spawnp(path, argv, env if repaired is None else repaired, **kwargs)

    _posixsubprocess.fork_exec = fork_exec  # type: ignore[attr-defined]
    for wrapper, real in ((execv, real_execv), (execve, real_execve), (posix_spawn, real_spawn),
                          (posix_spawnp, real_spawnp)):
        wrapper.__name__, wrapper.__doc__ = real.__name__, real.__doc__
        setattr(os, real.__name__, wrapper)


def _path(path: object) -> str:
    return f"/proc/self/fd/{path}" if isinstance(path, int) else os.fsdecode(path)  # type: ignore[arg-type]


def _child_env(candidates: list[str], argv: object, env: dict[str, str] | None) -> dict[str, str] | None:
    """None to exec as asked, or the environment to give the child instead (PYTHONPATH repaired);
    OSError(ENOTSUP) when the child would be a Python interpreter that cannot apply the policy it inherits."""
    from . import _env, _policy, _seccomp

    environ = dict(os.environ) if env is None else env
    try:
        settings = _policy.policy_from_environment(environ)
        strict = _env.parse_bool(environ.get(STRICT_ENV, "") or "0")
    except ValueError:
        return None  # the child refuses to start itself, with its own one line
    if not settings["fork"] and not settings["exit"] and not strict:
        return None  # no policy travels to this child
    unheld = unheld_policy(settings, strict, _seccomp.active_rule())
    path = next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)
    if unheld is not None and path is not None:  # else the kernel rule holds it all, or the exec fails anyway
        args = [os.fsdecode(a) for a in argv]  # type: ignore[attr-defined]
        blocked = inspect(path, args, environ).blocked_by()
        if blocked:
            raise OSError(errno.ENOTSUP, f"forkguard: not starting {' '.join(args)!r}: {blocked}, so it would run "
                                         f"without forkguard's {unheld}; start it without that option")
    pythonpath = environ.get("PYTHONPATH", "")
    if AUTOLOAD_DIR in pythonpath.split(os.pathsep):
        return None
    return dict(environ, PYTHONPATH=os.pathsep.join(p for p in (AUTOLOAD_DIR, pythonpath) if p))
