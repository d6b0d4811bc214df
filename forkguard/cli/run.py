"""``forkguard run [options] -- CMD ...``: start a Python program with forkguard active, unchanged.

The options become FORKGUARD_* variables (the same names a program can set
itself); a ``sitecustomize`` on PYTHONPATH imports forkguard at startup, which
applies them. Every option is checked before the command starts, so a typo
never starts a program without its policy.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from .. import _env, _policy
from . import ForkguardError

AUTOLOAD_DIR = Path(__file__).resolve().parent.parent / "_autoload"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


class RunCommand:
    name = "run"
    help = "run a Python program with forkguard active, without changing its code"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.epilog = (
            "examples:\n"
            "  forkguard run --fork-mode deny -- python app.py\n"
            "  forkguard run --exit-mode kill_children --exit-grace 2 -- gunicorn app:app\n\n"
            "Each option sets the FORKGUARD_* variable named beside it; the program's own\n"
            "subprocesses inherit them."
        )
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        for option in _policy.ENV_OPTIONS:
            help = f"{option.help} [{option.variable}]"
            if option.parse is _env.parse_bool:  # a switch: present means 1
                parser.add_argument(option.flag, action="store_const", const="1", dest=option.variable, help=help)
            elif option.variable == "FORKGUARD_PDEATHSIG":  # a switch with an optional signal number
                parser.add_argument(option.flag, nargs="?", const="1", metavar="SIGNUM", dest=option.variable,
                                    help=help)
            else:
                parser.add_argument(option.flag, metavar="VALUE", dest=option.variable, help=help)
        parser.add_argument("--strict-hooks", action="store_true",
                            help="re-raise fork-hook errors [FORKGUARD_STRICT_HOOKS]")
        parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise ForkguardError("no command given: forkguard run [options] -- python app.py")
        env = dict(os.environ)
        for option in _policy.ENV_OPTIONS:
            value = getattr(args, option.variable)
            if value is not None:
                try:
                    option.parse(value)
                except ValueError as exc:
                    raise ForkguardError(f"{option.flag} {value!r}: {exc}") from None
                env[option.variable] = value
        if args.strict_hooks:
            env["FORKGUARD_STRICT_HOOKS"] = "1"
        try:
            _policy.check_policy(_policy.policy_from_environment(env))
        except (TypeError, ValueError) as exc:
            raise ForkguardError(str(exc)) from None
        executable = shutil.which(command[0])
        if executable is None:
            raise ForkguardError(f"{command[0]!r}: command not found")
        if not is_python_program(executable):
            raise ForkguardError(
                f"{command[0]!r} is not a Python program (neither a python interpreter nor a script "
                "with python on its #! line); forkguard works inside Python processes"
            )
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(AUTOLOAD_DIR), env.get("PYTHONPATH")) if p)
        env["FORKGUARD_PACKAGE_DIR"] = str(PACKAGE_DIR)
        os.execve(executable, command, env)
        return 0  # not reached: the program replaces this process and its exit status is ours


def is_python_program(path: str) -> bool:
    """A python interpreter, or a script whose #! line runs one (pip's console scripts are)."""
    if Path(path).name.startswith("python"):
        return True
    try:
        with open(path, "rb") as f:
            first_line = f.readline(512)
    except OSError:
        return False
    return first_line.startswith(b"#!") and b"python" in first_line
