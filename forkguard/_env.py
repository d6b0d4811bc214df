"""FORKGUARD_* environment variables and argument values: parsed and checked in one place, refused with one line."""

from __future__ import annotations

import math
import os
import sys

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    """1/0, true/false, yes/no, on/off; ValueError otherwise."""
    if raw.strip().lower() in TRUE_WORDS:
        return True
    if raw.strip().lower() in FALSE_WORDS:
        return False
    raise ValueError("not a boolean: use 1 or 0")


def parse_choice(raw: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``; ValueError listing them otherwise."""
    if raw.strip().lower() not in choices:
        raise ValueError(f"not one of {', '.join(choices)}")
    return raw.strip().lower()


def parse_seconds(raw: str) -> float:
    """A finite number of seconds >= 0; ValueError otherwise."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError("not a finite number of seconds >= 0")
    return value


def check_seconds(value: object, what: str, where: str, *, positive: bool = False) -> float:
    """A finite number of seconds (>= 0, or > 0 with ``positive``); TypeError or ValueError in one line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {what} must be a number of seconds, not {type(value).__name__}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int past float's range
        finite = False
    if not finite or value < 0 or (positive and value == 0):
        raise ValueError(f"{where}: {what} must be a finite number of seconds {'> 0' if positive else '>= 0'}, "
                         f"not {value!r}")
    return float(value)


def read_bool(name: str, default: bool = False) -> bool:
    """A boolean variable; ValueError naming it and the accepted values when unreadable."""
    return _read(name, parse_bool, default)


def read_choice(name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first is the default); ValueError listing them when unknown."""
    return _read(name, lambda raw: parse_choice(raw, choices), choices[0])


def read_seconds(name: str, default: float) -> float:
    """A number of seconds; ValueError naming the variable when unreadable."""
    return _read(name, parse_seconds, default)


def _read(name: str, parse, default):  # type: ignore[no-untyped-def]
    """Parse variable ``name``; unreadable, ValueError naming it, except in the CLI's own process.

    The ``forkguard`` command does not apply the runtime variables to itself (it
    passes them on, and ``forkguard run`` checks them), so a bad value there
    must not stop ``forkguard --help``: the default is used.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        if IN_CLI:
            return default
        raise ValueError(f"{name}={raw!r} is {exc}") from None


def running_forkguard_cli(argv: list[str] | None = None) -> bool:
    """True in the process of the ``forkguard`` command itself (its script, or ``python [options] -m forkguard``)."""
    args = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    _, (kind, target) = python_options(args[1:])
    if kind == "module":
        return target == "forkguard"
    return kind == "script" and os.path.basename(target or "") == "forkguard"


# CPython's short options that take a value (Modules/main.c, Python/getopt.c): the rest of
# their argument, or the next one.
_VALUE_OPTIONS = "cmWX"


def python_options(args: list[str]) -> tuple[str, tuple[str, str | None]]:
    """The option letters a CPython command line sets, and what it runs (``("script", path)``,
    ``("module", name)``, ``("command", None)`` or ``("stdin", None)``), parsed as the interpreter does."""
    letters = ""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or arg == "-" or not arg.startswith("-"):
            script = args[i + 1] if arg == "--" and i + 1 < len(args) else arg
            return letters, ("stdin", None) if script in ("-", "--") else ("script", script)
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        for pos, letter in enumerate(arg[1:], 1):
            if letter in _VALUE_OPTIONS:
                value = arg[pos + 1:] or (args[i + 1] if i + 1 < len(args) else "")
                if letter == "c":
                    return letters, ("command", None)
                if letter == "m":
                    return letters, ("module", value)
                if not arg[pos + 1:]:
                    i += 1
                break
            letters += letter
        i += 1
    return letters, ("stdin", None)



IN_CLI = running_forkguard_cli()
