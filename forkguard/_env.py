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
    """True in the process of the ``forkguard`` command itself (its script, or ``python [options] -m forkguard``).

    Reads the interpreter's own command line, skipping its options (``-W error``,
    ``-X dev``, ``-Im``...) the way the interpreter does.
    """
    args = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "--check-hash-based-pycs":
            i += 2
            continue
        if arg == "-" or not arg.startswith("-") or arg == "--":
            script = args[i + 1] if arg == "--" and i + 1 < len(args) else arg
            return os.path.basename(script) == "forkguard"
        if arg.startswith("--"):  # --version, --help...
            i += 1
            continue
        letters = arg[1:]
        for pos, letter in enumerate(letters):
            rest = letters[pos + 1:]
            if letter == "c":
                return False
            if letter == "m":
                module = rest or (args[i + 1] if i + 1 < len(args) else "")
                return module == "forkguard"
            if letter in "WX":  # takes a value: the rest of this argument, or the next one
                if not rest:
                    i += 1
                break
        i += 1
    return False


IN_CLI = running_forkguard_cli()
