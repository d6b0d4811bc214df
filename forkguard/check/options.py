"""The checks' numeric options, validated in one place for the Python API and the command line alike.

Each validator takes the value and the name to blame (``"timeout"`` from the
API, ``"--timeout"`` from the CLI) and returns the value, or raises a
``TypeError``/``ValueError`` whose one-line message names the option and what
it accepts.
"""

from __future__ import annotations

import math

MAX_SECONDS = 86400.0  # a day: longer is a typo, and time.monotonic() + inf would overflow
MAX_COUNT = 10**9


def seconds(value: object, name: str, *, maximum: float = MAX_SECONDS) -> float:
    """A finite number of seconds in (0, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds (0 < S <= {maximum:g}), not {value!r}")
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise ValueError(f"{name} must be a number of seconds > 0 and <= {maximum:g}, not {value!r}")
    return float(value)


def count(value: object, name: str, *, low: int = 1, high: int = MAX_COUNT) -> int:
    """A whole number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def parse_seconds(text: str, name: str, *, maximum: float = MAX_SECONDS) -> float:
    """``seconds`` for a command-line string."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds > 0 and <= {maximum:g}, not {text!r}") from None
    return seconds(value, name, maximum=maximum)


def parse_count(text: str, name: str, *, low: int = 1, high: int = MAX_COUNT) -> int:
    """``count`` for a command-line string."""
    try:
        value = int(text, 10)
    except ValueError:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {text!r}") from None
    return count(value, name, low=low, high=high)
