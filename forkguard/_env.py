"""FORKGUARD_* environment variables: parsed in one place, refused with one clear line."""

from __future__ import annotations

import os

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
    """A number of seconds >= 0; ValueError otherwise."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not value >= 0:
        raise ValueError("not a number of seconds >= 0")
    return value


def read_bool(name: str, default: bool = False) -> bool:
    """A boolean variable; ValueError naming it and the accepted values when unreadable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse_bool(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is {exc}") from None


def read_choice(name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first is the default); ValueError listing them when unknown."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return choices[0]
    try:
        return parse_choice(raw, choices)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is {exc}") from None
