"""Crashes and hangs of a command: the signal, every thread's Python stack, and the native stack from gdb.

Both run the command under the supervisor (see ``supervise.py``), so every
process it starts, daemonised ones too, is found and killed at the end, and
``--user`` runs it as another user while gdb attaches as root.

``crash`` runs the command with faulthandler on (Python stacks of all threads
when a fatal signal arrives); when a signal kills it, it runs it again,
stopped before exec, lets gdb attach and watches it to the crash for the
native backtrace. ``hang`` waits ``timeout`` seconds, then asks each process
of the command that catches SIGUSR1 with forkguard's faulthandler hook for its
Python stacks (any other process would die of it), takes gdb's native stacks
of all of them, and kills the tree. A crash run that outlives its timeout is
reported as a hang.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .._procfs import stat_fields
from .options import seconds
from .supervise import ProcessStacks, Supervised, python_frames


@dataclass
class CrashReport:
    """How the command ended and, when a signal killed it, where."""

    command: list[str]
    crashed: bool
    exit_code: int | None
    signal: str | None
    seconds: float
    python_stack: list[str] = field(default_factory=list)
    native_stack: list[str] = field(default_factory=list)
    native_note: str = ""
    user: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    left_running: list[int] = field(default_factory=list)  # processes still there when it ended: killed
    hang: HangReport | None = None  # it outlived the timeout

    @property
    def found(self) -> bool:
        return self.crashed or self.hang is not None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class HangReport:
    """Whether the command outlived the timeout and, if so, the stacks of each of its processes."""

    command: list[str]
    hung: bool
    exit_code: int | None
    seconds: float
    timeout: float
    processes: list[ProcessStacks] = field(default_factory=list)
    user: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    left_running: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_command(command: list[str], check: str) -> None:
    """CheckError unless ``command`` names a program on PATH (or a path to one)."""
    from . import CheckError

    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise CheckError(f"give a command after --: forkguard check {check} -- python app.py")
    if not command[0] or shutil.which(command[0]) is None:
        raise CheckError(f"{command[0]!r}: command not found (forkguard check {check} -- COMMAND [ARGS...])")


def user_option(user: str | None):  # type: ignore[no-untyped-def]
    """The RunAs for ``--user``, or None; UserError (one line) for an unknown user."""
    from .._user import lookup_user

    return None if user is None else lookup_user(user)


def crash(command: list[str], timeout: float = 300.0, user: str | None = None) -> CrashReport:
    """Run ``command``; when a signal kills it, report the signal and both stacks (a hang past ``timeout`` too)."""
    check_command(command, "crash")
    timeout = seconds(timeout, "timeout")
    run_as = user_option(user)
    start = time.monotonic()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    with Supervised(command, env=env, run_as=run_as, stacks=True, hook=True) as run:
        code = run.wait(timeout)
        hang = hang_report(run, command, start, timeout, run_as) if code is None else None
        left = run.close() if hang is None else hang.left_running
    report = CrashReport(command, code is not None and code < 0, code,
                         signal.Signals(-code).name if code is not None and code < 0 else None,
                         time.monotonic() - start, python_frames(run.stderr.text()), user=run_as and run_as.name,
                         output={"stdout": run.stdout.summary(), "stderr": run.stderr.summary()},
                         left_running=left, hang=hang)
    if report.crashed:
        report.native_stack, report.native_note = _second_run(command, timeout, run_as)
    return report


def _second_run(command: list[str], timeout: float, run_as) -> tuple[list[str], str]:  # type: ignore[no-untyped-def]
    """The command again, stopped before exec; gdb (as root) attaches, lets it run and takes the crash's stack."""
    from . import gdb

    if shutil.which("gdb") is None:
        return [], gdb.MISSING
    with Supervised(command, run_as=run_as, stop=True) as run:
        deadline = time.monotonic() + 30
        while not _stopped(run.pid):
            if time.monotonic() > deadline or run.exit_code is not None:
                return [], "the second run did not reach its start under gdb"
            run.poll(0.01)
        frames, note = gdb.run_until_crash(run.pid, timeout)
    return gdb.render(frames), note


def _stopped(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] == "T"
    except (OSError, IndexError):
        return False


def hang(command: list[str], timeout: float = 30.0, user: str | None = None) -> HangReport:
    """Run ``command``; if it still runs after ``timeout`` s, take the stacks of all its processes and kill them."""
    check_command(command, "hang")
    timeout = seconds(timeout, "timeout")
    run_as = user_option(user)
    start = time.monotonic()
    with Supervised(command, run_as=run_as, stacks=True, hook=True) as run:
        code = run.wait(timeout)
        if code is None:
            return hang_report(run, command, start, timeout, run_as)
        left = run.close()
    return HangReport(command, False, code, time.monotonic() - start, timeout, user=run_as and run_as.name,
                      output={"stdout": run.stdout.summary(), "stderr": run.stderr.summary()}, left_running=left)


def hang_report(run: Supervised, command: list[str], start: float, timeout: float, run_as,  # type: ignore[no-untyped-def]
                 native: bool = True) -> HangReport:
    """Stacks of every process of a command that outlived ``timeout``, then the tree killed."""
    processes = run.take_stacks(native=native)
    left = run.close()
    return HangReport(command, True, None, time.monotonic() - start, timeout, processes, run_as and run_as.name,
                      {"stdout": run.stdout.summary(), "stderr": run.stderr.summary()}, left)
