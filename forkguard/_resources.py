"""Inherited files and sockets: what a child does with the descriptors it got from its parent.

After ``fork()`` parent and child hold the same open file *descriptions*: one
file offset, one socket stream. ``dup()`` does not separate them (a duplicate
shares the description); only opening the file again does. Per tracked object:

- ``share``: the POSIX default, nothing happens;
- ``reopen`` (files): the child gets its own description of the same file at the
  same offset, with the same flags, on the same fd number;
- ``close``: the child closes its descriptor (never ``shutdown()``, which would
  end the parent's connection too);
- ``keep`` (sockets): the child keeps using the connection;
- ``reconnect=callable`` (sockets): the child calls it for a new socket, which
  takes the old one's fd number.

Tracked buffered writers are flushed before every fork, so a child never
writes its parent's pending bytes a second time.
"""

from __future__ import annotations

import os
import stat
import weakref
from collections import namedtuple

from . import _log
from ._hooks import registry

POLICIES = ("share", "reopen", "close", "keep")
PRESETS = ("posix", "seed")
# include/uapi/asm-generic/fcntl.h (octal, as /proc/PID/fdinfo prints them)
O_ACCMODE, O_CREAT, O_EXCL, O_TRUNC = 0o3, 0o100, 0o200, 0o1000
O_APPEND, O_NONBLOCK, O_CLOEXEC = 0o2000, 0o4000, 0o2000000


class FdInfo(namedtuple("FdInfo", "fd kind target offset flags cloexec socket")):
    """One open descriptor: ``kind`` (file, dir, pipe, fifo, socket, char, eventfd, epoll, timerfd,
    signalfd, inotify, pidfd, anon_inode), what it points at, file offset, open flags as text
    (``rw``, ``append``, ``nonblock``), whether it closes on exec, and for sockets a dict with
    ``family``, ``type``, ``state``, ``local`` and ``remote`` addresses where /proc tells them.
    """

    __slots__ = ()


class Tracked(namedtuple("Tracked", "fd kind policy description")):
    """A tracked object: its fd, kind (file, socket, fd), policy and a short description."""

    __slots__ = ()


class _Entry:
    """One tracked object (held weakly) or raw fd, and what a child does with it."""

    __slots__ = ("description", "fd", "kind", "policy", "reconnect", "ref")

    def __init__(self, obj: object, fd: int, kind: str, policy: str | None, reconnect: object) -> None:
        self.ref = weakref.ref(obj) if kind != "fd" else None
        self.fd, self.kind, self.policy, self.reconnect = fd, kind, policy, reconnect
        self.description = repr(obj) if kind != "fd" else f"fd {fd}"

    def obj(self) -> object:
        return self.fd if self.ref is None else self.ref()


class _State:
    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.preset = "posix"
        self.hooked = False


_state = _State()


def track(obj: object, on_fork: str | None = None, *, reconnect: object = None) -> None:
    """Decide what a child does with ``obj`` (a file object, a socket, or an fd number).

    ``on_fork`` is share, reopen, close or keep; None leaves it to the preset.
    ``reconnect(sock) -> socket`` gives a child its own connection instead.
    """
    fd, kind = _describe(obj)
    if reconnect is not None:
        if not callable(reconnect):
            raise TypeError("forkguard.track: reconnect must be callable")
        if kind != "socket":
            raise ValueError(f"forkguard.track: reconnect applies to sockets, not to a {kind}")
        if on_fork not in (None, "reconnect"):
            raise ValueError("forkguard.track: give either on_fork or reconnect, not both")
        on_fork = "reconnect"
    elif on_fork is not None:
        if on_fork not in POLICIES:
            raise ValueError(f"forkguard.track: {on_fork!r} is not a policy; use one of {', '.join(POLICIES)} "
                             "or reconnect=callable")
        if on_fork == "reopen" and kind == "socket":
            raise ValueError("forkguard.track: a socket cannot be reopened; use close, keep or reconnect=")
        if on_fork == "reopen" and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"forkguard.track: reopen applies to regular files; fd {fd} is not one")
        if on_fork == "keep" and kind != "socket":
            raise ValueError(f"forkguard.track: keep applies to sockets; for a {kind} use share")
    untrack(obj, missing_ok=True)
    _state.entries.append(_Entry(obj, fd, kind, on_fork, reconnect))
    _install_hooks()


def untrack(obj: object, *, missing_ok: bool = False) -> None:
    """Stop tracking ``obj``."""
    kept = [e for e in _state.entries if e.obj() is not obj and e.obj() is not None]
    if len(kept) == len(_state.entries) and not missing_ok:
        raise ValueError(f"forkguard.untrack: {obj!r} is not tracked")
    _state.entries[:] = kept


def set_inherit_preset(preset: str) -> None:
    """``posix``: children share every socket. ``seed`` (seed 001): children keep client
    sockets and close listening ones. Tracked objects' own policies win."""
    if preset not in PRESETS:
        raise ValueError(f"forkguard.set_inherit_preset: {preset!r} is not a preset; use one of {', '.join(PRESETS)}")
    _state.preset = preset
    _install_hooks()


def tracked() -> list[Tracked]:
    """The tracked objects still alive, with the policy a child will apply."""
    return [Tracked(e.fd, e.kind, e.policy or f"preset {_state.preset}", e.description)
            for e in _state.entries if e.obj() is not None]


def _describe(obj: object) -> tuple[int, str]:
    """fd and kind of a trackable object; TypeError or ValueError otherwise."""
    import socket

    if isinstance(obj, bool) or not (isinstance(obj, (int, socket.socket)) or hasattr(obj, "fileno")):
        raise TypeError(f"forkguard.track: cannot track {type(obj).__name__}: give a file object, a socket "
                        "or a file descriptor number")
    kind = "fd" if isinstance(obj, int) else "socket" if isinstance(obj, socket.socket) else "file"
    if kind == "fd" and not 0 <= obj < 2**31:  # type: ignore[operator]
        raise ValueError(f"forkguard.track: {obj} is not a file descriptor number (0 to 2**31-1)")
    try:
        fd = obj if isinstance(obj, int) else obj.fileno()  # type: ignore[attr-defined]
        os.fstat(fd)
    except (OSError, ValueError) as exc:
        raise ValueError(f"forkguard.track: {obj!r} has no open descriptor ({exc})") from None
    return fd, kind


def _install_hooks() -> None:
    if not _state.hooked:
        registry.add({"before": _flush_tracked, "after_in_child": _apply_in_child}, priority=2**30)
        _state.hooked = True


def _flush_tracked() -> None:
    """Before the fork: push buffered bytes out, so the child cannot write them again."""
    for entry in _state.entries:
        obj = entry.obj()
        if entry.kind == "file" and obj is not None and not getattr(obj, "closed", True):
            try:
                obj.flush()  # type: ignore[attr-defined]
            except (OSError, ValueError):
                pass  # not writable, or closed meanwhile


def _apply_in_child() -> None:
    """In a new child: apply each tracked object's policy, then the preset to untracked sockets."""
    sockets = {i.fd: i.socket or {} for i in inherited() if i.kind == "socket"} if _state.preset == "seed" else {}
    for entry in list(_state.entries):
        obj = entry.obj()
        if obj is None:
            _state.entries.remove(entry)
            continue
        policy = entry.policy or _preset_policy(sockets.pop(entry.fd, None))
        registry.call_guarded(f"{policy} of {entry.description}",
                              lambda entry=entry, obj=obj, policy=policy: _apply(entry, obj, policy))
    for fd, facts in sockets.items():  # untracked sockets, under the seed preset
        if fd > 2 and _preset_policy(facts) == "close":
            _cover_with_devnull(fd)


def _preset_policy(socket_facts: dict[str, object] | None) -> str:
    """What the preset does with a socket (None: not a socket, or the posix preset)."""
    if socket_facts is None:
        return "share"
    return "close" if socket_facts.get("state") == "listening" else "keep"


def _apply(entry: _Entry, obj: object, policy: str) -> None:
    if policy in ("share", "keep"):
        return
    if policy == "reopen":
        reopen(entry.fd)
    elif policy == "close":
        if entry.kind == "fd":
            os.close(entry.fd)
        else:
            obj.close()  # type: ignore[attr-defined]  # close(2) of this fd; the parent's copy stays open
    elif policy == "reconnect":
        try:
            new = entry.reconnect(obj)  # type: ignore[misc]
        except Exception:
            obj.close()  # type: ignore[attr-defined]  # never leave the child on the parent's stream
            raise
        os.dup2(new.fileno(), entry.fd, inheritable=obj.get_inheritable())  # type: ignore[attr-defined]
        new.close()


def reopen(fd: int) -> None:
    """Give ``fd`` its own open file description: same file, offset and flags, same number."""
    offset = os.lseek(fd, 0, os.SEEK_CUR)
    flags = _fdinfo(os.getpid(), fd)["flags"]
    new = os.open(f"/proc/self/fd/{fd}", flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC))
    try:
        os.lseek(new, offset, os.SEEK_SET)
        os.dup2(new, fd, inheritable=not flags & O_CLOEXEC)
    finally:
        os.close(new)


def _cover_with_devnull(fd: int) -> None:
    # Closing a number that a Python object still holds would let the next
    # open() reuse it, and that object's close() would then close a stranger.
    # /dev/null on the number releases the socket and keeps the number taken.
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
    _log.debug("closed inherited listening socket on fd %d (preset seed)", fd)


# ---------------------------------------------------------------------------- /proc readers


def inherited(pid: int | None = None) -> list[FdInfo]:
    """Every open descriptor of this process (or ``pid``), read from /proc."""
    from ._procfs import check_pid

    pid = os.getpid() if pid is None else check_pid(pid, "forkguard.inherited")
    base = f"/proc/{pid}/fd"
    try:
        fds = sorted(int(name) for name in os.listdir(base))
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    sockets = _socket_table(pid)
    result = []
    for fd in fds:
        try:
            target = os.readlink(f"{base}/{fd}")
            info = _fdinfo(pid, fd)
        except OSError:
            continue  # closed meanwhile (the listing itself holds one, for instance)
        kind = _kind(f"{base}/{fd}", target)
        flags = info["flags"]
        socket = sockets.get(target[8:-1]) if kind == "socket" else None
        result.append(FdInfo(fd, kind, target, info["pos"] if kind in ("file", "dir") else None,
                             _flag_text(flags), bool(flags & O_CLOEXEC), socket))
    return result


def _fdinfo(pid: int, fd: int) -> dict[str, int]:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {"pos": int(fields["pos"]), "flags": int(fields["flags"], 8)}


def _kind(path: str, target: str) -> str:
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        name = target[len("anon_inode:"):].strip("[]")
        return {"eventpoll": "epoll"}.get(name, name if name in ("eventfd", "timerfd", "signalfd", "inotify",
                                                                 "pidfd") else "anon_inode")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "file"
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block")):
        if test(mode):
            return name
    return "file"


def _flag_text(flags: int) -> str:
    words = [{0: "r", 1: "w", 2: "rw"}.get(flags & O_ACCMODE, "?")]
    words += [name for bit, name in ((O_APPEND, "append"), (O_NONBLOCK, "nonblock")) if flags & bit]
    return ",".join(words)


# include/net/tcp_states.h
_TCP_STATES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
               7: "close", 8: "close_wait", 9: "last_ack", 10: "listening", 11: "closing"}


def _socket_table(pid: int) -> dict[str, dict[str, object]]:
    """inode -> socket facts, from /proc/PID/net/{tcp,tcp6,udp,udp6,unix} (the process's netns)."""
    table: dict[str, dict[str, object]] = {}
    for proto, family in (("tcp", "inet"), ("tcp6", "inet6"), ("udp", "inet"), ("udp6", "inet6")):
        try:
            with open(f"/proc/{pid}/net/{proto}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    state = int(fields[3], 16)
                    table[fields[9]] = {
                        "family": family, "type": "stream" if proto.startswith("tcp") else "dgram",
                        "state": _TCP_STATES.get(state, str(state)) if proto.startswith("tcp") else
                        ("connected" if state == 1 else "unconnected"),
                        "local": _address(fields[1]), "remote": _address(fields[2]),
                    }
        except OSError:
            continue
    try:
        with open(f"/proc/{pid}/net/unix") as f:
            next(f)
            for line in f:
                fields = line.split()
                listening = int(fields[3], 16) & 0x10000  # __SO_ACCEPTCON
                table[fields[6]] = {
                    "family": "unix", "type": {1: "stream", 2: "dgram", 5: "seqpacket"}.get(int(fields[4], 16), "?"),
                    "state": "listening" if listening else ("connected" if fields[5] == "03" else "unconnected"),
                    "local": fields[7] if len(fields) > 7 else "", "remote": None,
                }
    except OSError:
        pass
    return table


def _address(text: str) -> str:
    """'0100007F:1F90' (as /proc prints it, host byte order) -> '127.0.0.1:8080'."""
    import ipaddress

    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        address = str(ipaddress.IPv4Address(raw[::-1]))
    else:
        address = "[" + str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))) + "]"
    return f"{address}:{int(port, 16)}"
