"""FORKGUARD_* environment variables: read once, refused with one clear line when unreadable."""

from __future__ import annotations

import os

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def read_bool(name: str, default: bool = False) -> bool:
    """A boolean variable; ValueError naming it and the accepted values when unreadable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean: set it to 1 or 0")


def read_choice(name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first is the default); ValueError listing them when unknown."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return choices[0]
    if raw.lower() not in choices:
        raise ValueError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw.lower()
