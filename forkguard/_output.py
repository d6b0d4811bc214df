"""Files the tools write (reports, metrics, plots, flame graphs), safe for root on a shared machine.

``forkguard trace`` and ``forkguard check`` usually run as root, so a path a
user gives must never let another local user redirect the write:

- ``-`` is standard output; ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` and
  ``/proc/self/fd/N`` write to that descriptor;
- a device or a FIFO is written through (``-o /dev/null`` stays a device);
- a regular file (or a new one) is replaced atomically: a temporary file in the
  same directory, opened ``O_EXCL|O_NOFOLLOW``, written, fsync'd and renamed
  over it, so a reader never sees half a report and a link planted meanwhile
  is replaced, not followed;
- a symlink in a sticky world-writable directory (``/tmp``) is followed only
  when the kernel's ``protected_symlinks`` would follow it: it belongs to us
  or to the directory's owner.

Every refusal is an :class:`OutputError` whose message is one line.
"""

from __future__ import annotations

import os
import re
import stat
import sys

_FD_PATH = re.compile(r"^/(?:dev/(?:fd/(\d+)|(stdout|stderr))|proc/self/fd/(\d+))$")
_STREAM_FDS = {"stdout": 1, "stderr": 2}
_MAX_LINKS = 40  # the kernel's own limit (MAXSYMLINKS)


class OutputError(OSError):
    """An output path that cannot or must not be written; the message is the one line to show."""


def check_output(path: str) -> None:
    """Refuse, before any work starts, a path :func:`write_output` would refuse."""
    _plan(path)


def write_output(path: str, data: str | bytes) -> None:
    """Write ``data`` to ``path`` by the rules above; OutputError (one line) when it cannot."""
    payload = data.encode() if isinstance(data, str) else data
    kind, target = _plan(path)
    try:
        if kind == "stdout":
            sys.stdout.flush()
            _write_all(1, payload)
        elif kind == "fd":
            _write_all(int(target), payload)
        elif kind == "through":
            _write_through(target, payload)
        else:
            _replace_atomically(target, payload)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None


def _plan(path: str) -> tuple[str, str]:
    """How ``path`` is written: ("stdout"|"fd"|"through"|"replace", target)."""
    if not isinstance(path, str) or not path:
        raise OutputError(f"an output path must be a non-empty string, not {path!r}")
    if "\0" in path:
        raise OutputError(f"output path {path!r} contains a NUL byte")
    if path == "-":
        return "stdout", ""
    match = _FD_PATH.match(path)
    if match:
        fd = int(match.group(1) or match.group(3) or _STREAM_FDS.get(match.group(2) or "", -1))
        try:
            os.fstat(fd)
        except OSError:
            raise OutputError(f"cannot write {path}: descriptor {fd} is not open") from None
        return "fd", str(fd)
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            _check_directory(path, os.path.dirname(current))
            return "replace", current
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            _check_link_may_be_followed(path, current, info)
            current = os.path.join(os.path.dirname(current), os.readlink(current))
            current = os.path.abspath(current)
            continue
        if stat.S_ISDIR(info.st_mode):
            raise OutputError(f"cannot write {path}: it is a directory; give a file name")
        if stat.S_ISREG(info.st_mode):
            _check_directory(path, os.path.dirname(current))
            return "replace", current
        if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) or stat.S_ISFIFO(info.st_mode):
            if not os.access(current, os.W_OK):
                raise OutputError(f"cannot write {path}: permission denied")
            return "through", current
        raise OutputError(f"cannot write {path}: it is a socket, not a file")
    raise OutputError(f"cannot write {path}: too many levels of symbolic links")


def _check_directory(path: str, directory: str) -> None:
    """The directory exists and a file can be made in it: tried, since os.access() says yes to root even
    on a read-only mount or in /proc."""
    if not os.path.isdir(directory):
        raise OutputError(f"cannot write {path}: directory {directory} does not exist")
    probe = os.path.join(directory, f".forkguard-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        os.unlink(probe)
    except FileExistsError:
        pass  # a probe of ours left by a killed run: the directory takes files
    except OSError as exc:
        raise OutputError(f"cannot write {path}: directory {directory} is not writable ({exc.strerror})") from None


def _check_link_may_be_followed(path: str, link: str, info: os.stat_result) -> None:
    """The kernel's protected_symlinks rule (fs/namei.c, may_follow_link), applied for root as for anyone."""
    directory = os.path.dirname(link)
    dir_info = os.stat(directory)
    sticky_world_writable = dir_info.st_mode & stat.S_ISVTX and dir_info.st_mode & stat.S_IWOTH
    if not sticky_world_writable or info.st_uid in (os.geteuid(), dir_info.st_uid):
        return
    raise OutputError(
        f"refusing to write {path}: {link} is a symlink owned by uid {info.st_uid} in the sticky "
        f"world-writable directory {directory} (the kernel's protected_symlinks rule); remove it or write elsewhere"
    )


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def _write_through(target: str, payload: bytes) -> None:
    """Write to a device or FIFO in place; never create or replace anything."""
    fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a file since it was checked
            raise OutputError(f"cannot write {target}: it changed into a regular file while being opened")
        _write_all(fd, payload)
    finally:
        os.close(fd)


def _replace_atomically(target: str, payload: bytes) -> None:
    """A new file beside ``target`` (O_EXCL|O_NOFOLLOW), fsync'd, renamed over it; keeps an old file's mode."""
    directory, name = os.path.split(target)
    try:
        old = os.stat(target, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    mode = stat.S_IMODE(old.st_mode) if old is not None and stat.S_ISREG(old.st_mode) else 0o644
    for attempt in range(100):
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            break
        except FileExistsError:
            continue
    else:
        raise OutputError(f"cannot write {target}: no free temporary name in {directory}")
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it
            if old is not None and os.geteuid() == 0 and stat.S_ISREG(old.st_mode):
                os.fchown(fd, old.st_uid, old.st_gid)  # root replacing a user's file leaves it theirs
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
