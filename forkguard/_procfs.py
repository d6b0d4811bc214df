"""Small /proc readers shared by the runtime (doctor, exit modes), the CLI, trace and check; imports only os."""

from __future__ import annotations

import os


def check_pid(pid: object, where: str) -> int:
    """``pid`` as an int > 0; TypeError or ValueError (one line naming ``where``) otherwise."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"{where}: pid must be an int, not {type(pid).__name__}")
    if not 0 < pid < 2**31:
        raise ValueError(f"{where}: pid must be a process id > 0, not {pid}")
    return pid


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, ...; OSError when the process is gone."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    """True while ``pid`` exists and has not finished (a zombie has)."""
    try:
        return stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def children() -> dict[int, list[int]]:
    """Every process's children (zombies included), by parent pid, from one pass over /proc.

    OSError when /proc cannot tell: not mounted, or no descriptor left (EMFILE);
    an empty answer would read as "no children".
    """
    entries = os.listdir("/proc")
    if "self" not in entries:
        raise FileNotFoundError(2, "/proc is not mounted", "/proc")
    by_parent: dict[int, list[int]] = {}
    for entry in entries:
        if entry.isdigit():
            try:
                ppid = int(stat_fields(int(entry))[1])
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                continue  # gone meanwhile
            by_parent.setdefault(ppid, []).append(int(entry))
    return by_parent


def descendants(root: int) -> list[int]:
    """Every descendant of ``root``, parents before children."""
    by_parent = children()
    found, queue = [], [root]
    while queue:
        for child in sorted(by_parent.get(queue.pop(0), [])):
            found.append(child)
            queue.append(child)
    return found


def cmdline(pid: int) -> str:
    """The command line of ``pid`` joined by spaces, or "" when it cannot be read (gone, or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def comm(pid: int) -> str:
    """The command name of ``pid`` (at most 15 characters), or "" when it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
