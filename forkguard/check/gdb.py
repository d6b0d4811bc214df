"""Native stacks from gdb in batch mode: attach to a live process, or watch a stopped one run until it crashes.

Frames are shortened to ``#N function at file:line`` (or ``from library``);
runs of one frame repeated (a C stack overflow recursing 15,000 times) are
collapsed into one line. :func:`fork_handler` names the at-fork handler a
thread is stuck in when its stack passes through glibc's fork.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

MISSING = "gdb is not installed (apt-get install gdb) for the native stack"
_FRAME = re.compile(r"#(\d+)\s+(?:(0x[0-9a-f]+) in )?(\S+)")
_WHERE = re.compile(r"\) (at|from) (\S+)$")
_THREAD = re.compile(r"^Thread (\d+) \(.*\(LWP (\d+)\)")
# glibc's fork runs the pthread_atfork prepare handlers from these (posix/register-atfork.c, posix/fork.c)
_FORK_FRAMES = {"__run_prefork_handlers", "__run_fork_handlers", "__libc_fork", "_Fork", "__fork", "fork"}


@dataclass
class Frame:
    number: int
    function: str
    where: str  # "at file:line", "from library" or ""
    address: int | None

    def __str__(self) -> str:
        return f"#{self.number} {self.function}" + (f" {self.where}" if self.where else "")


def parse(text: str) -> list[Frame | str]:
    """gdb's backtrace output as Frames, with ``"Thread N:"`` headers between the threads."""
    frames: list[Frame | str] = []
    for line in text.splitlines():
        line = line.strip()
        thread = _THREAD.match(line)
        if thread:
            frames.append(f"Thread {thread[1]}:")
            continue
        match = _FRAME.match(line)
        if not match:
            continue
        where = _WHERE.search(line)
        frames.append(Frame(int(match[1]), match[3], f"{where[1]} {where[2]}" if where else "",
                            int(match[2], 16) if match[2] else None))
    return frames


def render(frames: list[Frame | str]) -> list[str]:
    """Frames as lines, a run of the same function at the same place collapsed: ``#12-#15430 f at x.c:9 (× 15419)``."""
    lines: list[str] = []
    run: list[Frame] = []

    def flush() -> None:
        if len(run) > 2:
            lines.append(f"#{run[0].number}-#{run[-1].number} {run[0].function}"
                         + (f" {run[0].where}" if run[0].where else "") + f" (× {len(run)})")
        else:
            lines.extend(str(f) for f in run)
        run.clear()

    for frame in frames:
        if isinstance(frame, Frame) and run and _same(frame, run[-1]):
            run.append(frame)
            continue
        flush()
        if isinstance(frame, Frame):
            run.append(frame)
        else:
            lines.append(frame)
    flush()
    return lines


def _same(a: Frame, b: Frame) -> bool:
    """One function recursing: same name and place; an unnamed frame (``??``) only at the same address."""
    return (a.function, a.where) == (b.function, b.where) and (a.function != "??" or a.address == b.address)


def _gdb(args: list[str], timeout: float) -> tuple[str, str]:
    """gdb's output, or "" and a note saying why there is none."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return "", MISSING
    try:
        proc = subprocess.run([gdb, "-q", "-batch", "-nx", "-ex", "set pagination off", "-ex", "set width 0",
                               *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "", f"gdb did not finish within {timeout:g} s"
    text = proc.stdout + proc.stderr
    if "ptrace: Operation not permitted" in text:
        return "", ptrace_hint()
    if "ptrace: No such process" in text:
        return "", "the process ended before gdb could attach"
    return text, ""


def ptrace_hint() -> str:
    """Why gdb may not attach here, and what allows it."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
    except OSError:
        scope = ""
    where = f" (kernel.yama.ptrace_scope is {scope})" if scope and scope != "0" else ""
    return ("gdb could not attach: ptrace is not permitted here" + where + ". As root, with "
            "`sysctl kernel.yama.ptrace_scope=0`, or in a container started with --cap-add=SYS_PTRACE, it can.")


def attach(pid: int, timeout: float = 60) -> tuple[list[Frame | str], str]:
    """Every thread's native stack of the live process ``pid`` (left running), or a note saying why not."""
    text, note = _gdb(["-p", str(pid), "-ex", "thread apply all bt"], timeout)
    return parse(text), note


def run_until_crash(pid: int, timeout: float) -> tuple[list[Frame | str], str]:
    """Attach to ``pid`` (stopped by SIGSTOP before exec), let it run, and take the backtrace where it stops."""
    text, note = _gdb(["-ex", "handle SIGSTOP nostop noprint nopass", "-p", str(pid), "-ex", "continue",
                       "-ex", "bt"], timeout)
    if note:
        return [], note
    if "Program received signal" not in text and "Program terminated with signal" not in text:
        return [], "the second run, under gdb, did not crash: the crash depends on timing or input"
    return parse(text), ""


def fork_handler(frames: list[Frame | str], pid: int) -> dict[str, str] | None:
    """The pthread_atfork handler a thread is inside, named with its library, when a stack passes through fork()."""
    thread: list[Frame] = []
    for item in [*frames, "end"]:
        if isinstance(item, Frame):
            thread.append(item)
            continue
        for i, frame in enumerate(thread):
            if frame.function in _FORK_FRAMES and i > 0:
                handler = thread[i - 1]
                return {"function": handler.function, "library": _library(handler, pid)}
        thread = []
    return None


def _library(frame: Frame, pid: int) -> str:
    """The shared object a frame's code lies in: gdb's ``from`` part, else the mapping of its address."""
    if frame.where.startswith("from "):
        return os.path.normpath(frame.where[5:])
    if frame.address is not None:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    fields = line.split()
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    if start <= frame.address < end and len(fields) >= 6:
                        return fields[5]
        except OSError:
            pass
    return "?"
