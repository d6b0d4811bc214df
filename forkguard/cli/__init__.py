"""The ``forkguard`` command: one module per subcommand, plain argparse.

Each subcommand is a :class:`Command` (``prepare_parser``, ``run``). Errors the
user can fix raise :class:`ForkguardError`, printed as one line with its exit
code (2 for usage and environment errors).
"""

from __future__ import annotations

import argparse
import sys
from typing import Protocol

from .. import __version__


class ForkguardError(Exception):
    """An error the user can act on; its message is the one line they see."""

    exit_code = 2


class Command(Protocol):
    """One ``forkguard`` subcommand."""

    name: str
    help: str

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int: ...


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the option and what it accepts), not the usage block first."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _commands() -> list[Command]:
    from .check import CheckCommand
    from .doctor import DoctorCommand
    from .run import RunCommand
    from .trace import TraceCommand

    return [RunCommand(), DoctorCommand(), TraceCommand(), CheckCommand()]


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every registered subcommand."""
    parser = _Parser(
        prog="forkguard",
        description="Make fork() safe and visible in Python programs. "
        "The runtime is a library: `import forkguard` (see README.md).",
    )
    parser.add_argument("--version", action="version", version=f"forkguard {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _commands():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.prepare_parser(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``forkguard`` script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return command.run(args, parser)
    except ForkguardError as exc:
        print(f"forkguard {command.name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
