"""Crashes and hangs of a command: the signal, every thread's Python stack, and the native stack from gdb.

``crash`` runs the command with faulthandler on (Python stacks of all threads
when a fatal signal arrives), and where gdb is installed runs it again under
gdb in batch mode for the native backtrace. ``hang`` waits ``timeout`` seconds,
then asks the command and each process it forked for their Python stacks
(faulthandler on SIGUSR1, set up by a sitecustomize, as ``forkguard run``
does), takes gdb's native stacks, and kills them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field

from .._procfs import cmdline, descendants, running

PTRACE_HINT = ("gdb could not attach: ptrace is not permitted here. As root, or with "
               "`sysctl kernel.yama.ptrace_scope=0`, or in a container started with --cap-add=SYS_PTRACE, it can.")
# Each process (forked children too) dumps its threads' stacks on SIGUSR1 into its own file, named by pid.
_HANG_SITECUSTOMIZE = '''
import faulthandler, os, signal

def _forkguard_hang_register():
    stacks = open(os.path.join(os.environ["FORKGUARD_HANG_DIR"], f"{os.getpid()}.txt"), "w")
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    globals()["_forkguard_hang_file"] = stacks

_forkguard_hang_register()
os.register_at_fork(after_in_child=_forkguard_hang_register)
'''


@dataclass
class CrashReport:
    """How the command ended and, when a signal killed it, where."""

    command: list[str]
    crashed: bool
    exit_code: int
    signal: str | None
    python_stack: list[str] = field(default_factory=list)
    native_stack: list[str] = field(default_factory=list)
    native_note: str = ""
    stderr_tail: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ProcessStacks:
    """One process of a hung command: its Python stacks (every thread) and native stacks."""

    pid: int
    command: str
    python_stack: list[str] = field(default_factory=list)
    native_stack: list[str] = field(default_factory=list)


@dataclass
class HangReport:
    """Whether the command outlived the timeout and, if so, the stacks of each of its processes."""

    command: list[str]
    hung: bool
    exit_code: int | None
    seconds: float
    processes: list[ProcessStacks] = field(default_factory=list)
    native_note: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _check_command(command: list[str]) -> None:
    from . import CheckError

    if not command:
        raise CheckError("no command given: forkguard check crash -- python app.py")
    if shutil.which(command[0]) is None:
        raise CheckError(f"{command[0]!r}: command not found")


def _python_frames(text: str) -> list[str]:
    """faulthandler's 'File "x.py", line N in f' lines, in the order it printed them."""
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith("File ") or line.startswith(("Thread 0x", "Current thread 0x"))]


def _gdb_frames(text: str) -> list[str]:
    """gdb's backtrace lines, shortened to ``#N function at file:line`` (or ``from library``); thread headers kept."""
    frames = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Thread ") and "(LWP" in line:
            frames.append(line.split(" (", 1)[0] + ":")
            continue
        match = re.match(r"#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+)", line)
        if not match:
            continue
        where = re.search(r"\) (at|from) (\S+)$", line)
        frames.append(f"#{match[1]} {match[2]}" + (f" {where[1]} {where[2]}" if where else ""))
    return frames


def crash(command: list[str], timeout: float = 120) -> CrashReport:
    """Run ``command``; when a signal kills it, report the signal and both stacks."""
    _check_command(command)
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    report = CrashReport(command, proc.returncode < 0, proc.returncode,
                         signal.Signals(-proc.returncode).name if proc.returncode < 0 else None,
                         _python_frames(proc.stderr), stderr_tail="\n".join(proc.stderr.splitlines()[-20:]))
    if report.crashed:
        report.native_stack, report.native_note = _gdb_run(command, timeout)
    return report


def _gdb_run(command: list[str], timeout: float) -> tuple[list[str], str]:
    frames, note = _gdb(["-ex", "run", "-ex", "bt", "--args", *command], timeout)
    if not frames and not note:
        note = "the second run, under gdb, did not crash: the crash depends on timing or input"
    return frames, note


def _gdb(args: list[str], timeout: float) -> tuple[list[str], str]:
    """gdb in batch mode: its backtrace frames, or a note saying why there are none (not installed, no ptrace)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return [], "gdb is not installed (apt-get install gdb) for the native stack"
    proc = subprocess.run([gdb, "-q", "-batch", "-nx", "-ex", "set pagination off", *args], capture_output=True,
                          text=True, timeout=timeout)
    text = proc.stdout + proc.stderr
    if "ptrace" in text and "not permitted" in text:
        return [], PTRACE_HINT
    return _gdb_frames(text), ""


def hang(command: list[str], timeout: float) -> HangReport:
    """Run ``command``; if it still runs after ``timeout`` s, take the stacks of it and its descendants, kill them."""
    from . import CheckError

    _check_command(command)
    if not timeout > 0:
        raise CheckError(f"--timeout must be a number of seconds > 0, not {timeout}")
    with tempfile.TemporaryDirectory() as site:
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(_HANG_SITECUSTOMIZE)
        env = {**os.environ, "FORKGUARD_HANG_DIR": site,
               "PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)}
        start = time.monotonic()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            proc.wait(timeout)
            return HangReport(command, False, proc.returncode, time.monotonic() - start)
        except subprocess.TimeoutExpired:
            pass
        pids = [proc.pid, *descendants(proc.pid)]
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)  # faulthandler writes every thread's Python stack
        time.sleep(0.5)
        processes, note = [], ""
        for pid in pids:
            native, note = _gdb(["-p", str(pid), "-ex", "thread apply all bt"], 60)
            processes.append(ProcessStacks(pid, cmdline(pid) or "?", _read_stacks(site, pid), native))
        for pid in reversed(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        deadline = time.monotonic() + 5
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        return HangReport(command, True, None, time.monotonic() - start, processes, note)


def _read_stacks(site: str, pid: int) -> list[str]:
    try:
        with open(os.path.join(site, f"{pid}.txt")) as f:
            return _python_frames(f.read())
    except OSError:
        return []
