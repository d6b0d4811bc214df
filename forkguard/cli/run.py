"""``forkguard run [options] -- CMD ...``: start a program under forkguard's fork and exit policy, failing closed.

The options become FORKGUARD_* variables (the same names a program can set
itself); a ``sitecustomize`` on PYTHONPATH imports forkguard at startup, which
applies them. ``--fork-mode deny`` is also enforced by the kernel where it can
be (a seccomp filter installed here, inherited by everything the program runs).
Every option is checked, and the command is looked at, before it starts:
whatever forkguard could not hold (a Python started with ``-I``, a shell
script, a pre-fork server under ``wait_for_exit_exec``) is refused with one
line instead of running without its policy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

from .. import _env, _launch, _policy, _seccomp
from .._hooks import STRICT_ENV
from . import ForkguardError

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENFORCE = ("auto", "kernel", "python")


class RunOption:
    """An option of ``forkguard run`` that is not a FORKGUARD_* policy variable; ``parse`` is its whole check."""

    def __init__(self, flag: str, dest: str, metavar: str, parse, help: str) -> None:  # type: ignore[no-untyped-def]
        self.flag, self.dest, self.metavar, self.parse, self.help = flag, dest, metavar, parse, help


RUN_OPTIONS = (
    RunOption("--enforce", "enforce", "|".join(ENFORCE), lambda raw: _env.parse_choice(raw, ENFORCE),
              "who holds --fork-mode deny: kernel (a seccomp filter on the program and everything it runs), "
              "python (forkguard inside each Python process), or auto (default: kernel where it can)"),
)

# Pre-fork servers whose workers never exec: under wait_for_exit_exec the master
# would block in each fork until that worker exits.
PRE_FORK_SERVERS = {"gunicorn": "gunicorn's master", "celery": "celery's prefork pool"}


class RunCommand:
    name = "run"
    help = "run a program under forkguard's fork and exit policy, without changing its code"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.epilog = (
            "examples:\n"
            "  forkguard run --fork-mode deny -- python app.py\n"
            "  forkguard run --exit-mode kill_children --exit-grace 2 -- gunicorn app:app\n\n"
            "Each policy option sets the FORKGUARD_* variable named beside it; the program's own\n"
            "subprocesses inherit them. --fork-mode deny is enforced by the kernel too where it can be\n"
            "(see --enforce); the rest works inside Python, so a program forkguard cannot load into\n"
            "(not Python, or Python with -I, -E or -S) is refused rather than run without it."
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
        for run_option in RUN_OPTIONS:
            parser.add_argument(run_option.flag, metavar=run_option.metavar, dest=run_option.dest, help=run_option.help)
        parser.add_argument("--strict-hooks", action="store_true",
                            help="re-raise fork-hook errors [FORKGUARD_STRICT_HOOKS]")
        parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        env, settings, strict = _policy_environment(args)
        chosen = {o.dest: _parse(o, getattr(args, o.dest)) for o in RUN_OPTIONS if getattr(args, o.dest) is not None}
        enforce = str(chosen.get("enforce", "auto"))
        command = _command(args.command)
        kernel_rule, unavailable = _kernel_rule(enforce, settings)
        executable = _executable(command[0], env)
        launch = _launch.inspect(executable, command, env)
        _refuse_what_would_escape(command[0], launch, settings, strict, kernel_rule, enforce)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_launch.AUTOLOAD_DIR, env.get("PYTHONPATH")) if p)
        env["FORKGUARD_PACKAGE_DIR"] = PACKAGE_DIR
        if unavailable:
            print(f"forkguard run: note: {unavailable}, so deny is enforced inside Python only (see --enforce)",
                  file=sys.stderr)
        if kernel_rule is not None:
            try:
                _seccomp.install(kernel_rule["deny_exec"])
            except _seccomp.SeccompError as exc:
                raise ForkguardError(f"cannot install the kernel rule: {exc.strerror}; use --enforce python") from None
        try:
            os.execve(executable, command, env)
        except OSError as exc:
            raise ForkguardError(f"cannot run {command[0]!r}: {exc.strerror}") from None
        return 0  # not reached: the program replaces this process and its exit status is ours


def _parse(option: _policy.EnvOption | RunOption, raw: str) -> object:
    """One option's value through its own parser; its error names the option and what it accepts."""
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise ForkguardError(f"{option.flag} {raw!r}: {exc}") from None


def _policy_environment(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, dict[str, object]], bool]:
    """The program's environment with the options set, the policy it holds, and strict hooks; all checked."""
    env = dict(os.environ)
    given = {}
    for option in _policy.ENV_OPTIONS:
        raw = getattr(args, option.variable)
        if raw is not None:
            _parse(option, raw)
            env[option.variable] = given[option.variable] = raw
    if args.strict_hooks:
        env[STRICT_ENV] = "1"
    try:
        settings = _policy.policy_from_environment(env)  # values inherited from the environment too
        strict = _env.parse_bool(env.get(STRICT_ENV, "") or "0")
    except ValueError as exc:
        raise ForkguardError(f"{exc} (in the environment)") from None
    for target in ("fork", "exit"):
        try:
            _policy.check_policy({"fork": {}, "exit": {}, target: settings[target]})
        except (TypeError, ValueError) as exc:
            sources = [f"{o.flag} {given[o.variable]}" if o.variable in given else f"{o.variable}={env[o.variable]}"
                       for o in _policy.ENV_OPTIONS if o.target == target and env.get(o.variable, "").strip()]
            reason = str(exc).split(": ", 1)[1] if str(exc).startswith("forkguard.") else str(exc)
            raise ForkguardError(f"{' '.join(sources)}: {reason}") from None
    return env, settings, strict


def _command(remainder: list[str]) -> list[str]:
    """The command after ``--``, which is required: without it a program's options could be taken for ours."""
    usage = "forkguard run [options] -- python app.py"
    if not remainder or remainder == ["--"]:
        raise ForkguardError(f"no command given: {usage}")
    if remainder[0] != "--":
        raise ForkguardError(f"put -- between the options and the command ({' '.join(remainder)}): {usage}")
    return remainder[1:]


def _kernel_rule(enforce: str, settings: dict[str, dict[str, object]]) -> tuple[dict[str, bool] | None, str | None]:
    """The kernel rule to install (``{"deny_exec": bool}``, for ``deny`` with --enforce auto or kernel) or None,
    and why --enforce auto could not have it."""
    mode = settings["fork"].get("mode", "allow")
    if enforce == "python":
        return None, None
    if mode != "deny":
        if enforce == "kernel":
            raise ForkguardError(f"--enforce kernel applies only to --fork-mode deny, not {mode!r}: "
                                 "the kernel can refuse a fork, not warn about it or wait for it")
        return None, None
    reason = _seccomp.unavailable()
    if reason is not None and enforce == "kernel":
        raise ForkguardError(f"--enforce kernel: {reason}; use --enforce python")
    if reason is not None:
        return None, reason
    return {"deny_exec": bool(settings["fork"].get("deny_exec", False))}, None


def _executable(name: str, env: dict[str, str]) -> str:
    """The file ``name`` runs, searched on the program's PATH as execvp would."""
    if not name:
        raise ForkguardError("the command is an empty string: forkguard run [options] -- python app.py")
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is not None:
        return os.path.abspath(found)
    if os.sep in name and os.path.isdir(name):
        raise ForkguardError(f"{name!r} is a directory, not a program")
    if os.sep in name and os.path.exists(name):
        raise ForkguardError(f"{name!r} is not executable (chmod +x it, or run it with its interpreter)")
    raise ForkguardError(f"{name!r}: command not found")


def _refuse_what_would_escape(name: str, launch: _launch.Launch, settings: dict[str, dict[str, object]],
                              strict: bool, kernel_rule: dict[str, bool] | None, enforce: str) -> None:
    """Refuse a program that would run without part of its policy, saying which part and what to do."""
    unheld = _launch.unheld_policy(settings, strict, kernel_rule)
    if unheld is None and kernel_rule is not None:
        return  # the kernel rule holds the whole policy, whatever the program is
    what = f"forkguard's {unheld}" if unheld else "forkguard"
    if settings["fork"].get("mode") == "deny" and kernel_rule is None:
        other = (" (or --enforce kernel, which holds deny whatever the program)" if enforce == "python"
                 else " (the kernel rule, which would hold deny whatever the program, is unavailable here)")
    else:
        other = " (only --fork-mode deny, enforced by the kernel, also holds for other programs)"
    if launch.python is None:
        wrapper = "; if it starts Python (a wrapper, a pyenv shim), name the interpreter" * ("script" in launch.what)
        raise ForkguardError(f"{name!r} is not a Python program ({launch.what}), and {what} works inside "
                             f"Python{wrapper}; run a Python program{other}")
    blocked = launch.blocked_by()
    if blocked:
        raise ForkguardError(f"{name!r} ({launch.what}) would run without {what}: {blocked}; "
                             f"run it without that option{other}")
    server = _pre_fork_server(launch)
    if settings["fork"].get("mode") == "wait_for_exit_exec" and server is not None:
        raise ForkguardError(f"--fork-mode wait_for_exit_exec would block {PRE_FORK_SERVERS[server]} in each fork "
                             "until that worker exits (pre-fork workers never exec), so it could serve nothing; "
                             "use --fork-mode warn or deny")


def _pre_fork_server(launch: _launch.Launch) -> str | None:
    """The pre-fork server a Python program runs (``-m gunicorn``, a script that imports it), or None."""
    kind, value = launch.main
    if kind == "module":
        top = (value or "").split(".")[0]
        return top if top in PRE_FORK_SERVERS else None
    if kind != "script":
        return None
    try:
        with open(value, "rb") as f:  # type: ignore[arg-type]
            source = f.read(65536).decode(errors="replace")
    except OSError:
        return None
    found = re.search(r"^\s*(?:from|import)\s+(" + "|".join(PRE_FORK_SERVERS) + r")\b", source, re.M)
    return found.group(1) if found else None
