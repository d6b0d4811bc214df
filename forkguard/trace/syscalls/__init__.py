"""Syscall names by number, per architecture, kept as data (one ``.tsv`` per architecture)."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path


@cache
def names(machine: str | None = None) -> dict[int, str]:
    """{number: name} for ``machine`` (default: this one); empty when there is no table for it."""
    path = Path(__file__).with_name(f"{machine or platform.machine()}.tsv")
    if not path.exists():
        return {}
    table = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            number, name = line.split("\t")
            table[int(number)] = name
    return table


def name_of(number: int, machine: str | None = None) -> str:
    """The syscall's name, or ``syscall_<number>`` for one the table does not know."""
    return names(machine).get(number, f"syscall_{number}")


def number_of(name: str, machine: str | None = None) -> int:
    """The number of syscall ``name``; ValueError naming the architecture when unknown."""
    for number, known in names(machine).items():
        if known == name:
            return number
    raise ValueError(f"unknown syscall {name!r} on {machine or platform.machine()}")
