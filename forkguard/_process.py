"""Which process are we in? Detects a new process after *any* fork, cheaply.

``os.register_at_fork`` only sees forks made through CPython's ``os.fork``. A C
extension or ``ctypes`` calling libc ``fork()`` runs no Python hook, so every
forkguard object that holds per-process state calls :func:`check_fork` first.

The check must cost next to nothing, and ``os.getpid()`` is a real syscall
(hundreds of ns in a VM). Instead we keep one private anonymous page marked
``MADV_WIPEONFORK``: the kernel hands every child a zero-filled copy of it, so
"the byte is 0" means "this process has not been seen yet". Where the kernel
refuses the advice (before Linux 4.14, other systems), or where
``FORKGUARD_FORK_DETECTION=getpid`` asks for it (a sandbox whose fork emulation
ignores the advice), we compare a cached pid instead.
"""

from __future__ import annotations

import mmap
import os

from . import _env

TYPE_CHECKING = False  # the typing machinery costs milliseconds at import; type checkers read this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

# include/uapi/asm-generic/mman-common.h; Python 3.11's mmap module lacks the name.
MADV_WIPEONFORK = 18


def _wipe_on_fork_page() -> mmap.mmap | None:
    """Return an armed page the kernel zeroes in each child, or None if unsupported."""
    if not hasattr(mmap, "MAP_PRIVATE") or not hasattr(mmap.mmap, "madvise"):
        return None
    # MADV_WIPEONFORK only applies to private anonymous mappings; Python's
    # default for fileno -1 is MAP_SHARED, which the kernel rejects with EINVAL.
    page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        page.madvise(MADV_WIPEONFORK)
    except OSError:
        page.close()
        return None
    page[0] = 1
    return page


class _GetpidMarker:
    """Stands in for the page where the kernel cannot wipe it: ``[0]`` is true when the pid is the adopted one."""

    def __getitem__(self, index: int) -> bool:
        return os.getpid() == _identity[0]

    def __setitem__(self, index: int, value: int) -> None:
        pass


DETECTION_ENV = "FORKGUARD_FORK_DETECTION"
_wiped = _wipe_on_fork_page() if _env.read_choice(DETECTION_ENV, ("auto", "getpid")) == "auto" else None
DETECTION = "madv_wipeonfork" if _wiped is not None else "getpid"
# Both answer ``_page[0]``: true once this process has been adopted (its child step ran).
_page: mmap.mmap | _GetpidMarker = _wiped if _wiped is not None else _GetpidMarker()
# The adopted pid, in a one-item list: per-process objects compare against
# ``_identity[0]``, the cheapest read Python has for a value that changes.
_identity = [os.getpid()]
_parent_pid: int | None = None  # the process this one was forked from, once a fork is seen
# Claims, keyed by (pid, pid of the process last seen): setdefault on a dict is
# atomic, so when two threads of a libc-forked child both notice the fork,
# exactly one runs the child step. The parent's pid in the key means a
# descendant that recycles a dead ancestor's pid is still seen as new.
_claims: dict[tuple[int, int], object] = {}
_handler: Callable[[str], None] | None = None


def set_new_process_handler(handler: Callable[[str], None]) -> None:
    """Install ``handler("check_fork")``, run once in each new process that check_fork() finds."""
    global _handler
    _handler = handler


def _adopt(pid: int) -> None:
    """Make ``pid`` this process's identity; the pid it replaces is its parent's."""
    global _parent_pid
    _parent_pid, _identity[0] = _identity[0], pid
    _page[0] = 1


def _new_process_detected() -> bool:
    """check_fork() found a new process: claim it and run the handler; False if another thread won."""
    pid = os.getpid()
    token = object()
    if _claims.setdefault((pid, _identity[0]), token) is not token:
        return False
    _adopt(pid)
    if _handler is not None:
        _handler("check_fork")
    return True


def adopt_after_os_fork() -> bool:
    """In CPython's ``after_in_child`` hook: adopt the new pid; False if already done.

    Only the forking thread exists at that point, so no claim is needed. An
    earlier at-fork hook may already have called check_fork() in this child.
    """
    if _page[0]:
        return False
    _adopt(os.getpid())
    return True


def check_fork() -> bool:
    """Run the child step now if this process is a fork nobody has handled yet.

    Returns True only on the call that discovered the new process. Cheap enough
    for hot paths: one memory read when nothing happened (a getpid() call where
    the kernel cannot wipe a page on fork).
    """
    if _page[0]:
        return False
    return _new_process_detected()


def current_pid() -> int:
    """The pid of the process forkguard last saw (cached; no syscall)."""
    return _identity[0]


def parent_pid() -> int | None:
    """The pid this process was forked from; None in the process that imported forkguard."""
    return _parent_pid


# Seed 001's SIGUSR2: a process forked by C code can be told to run its child
# step without touching forkguard itself. signum -> the handler it replaced.
_trigger_previous: dict[int, object] = {}


def install_signal_trigger(signum: int | None = None) -> None:
    """On ``signum`` (SIGUSR2 by default), run the child step if this process is an unhandled fork.

    The handler installed before, if it was a Python function, runs afterwards
    (the default action, which would end the process, does not). Call it from
    the main thread, as for any signal handler.
    """
    import signal

    signum = signal.SIGUSR2 if signum is None else signum
    if signum not in signal.valid_signals() or signum in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(f"forkguard.install_signal_trigger: {signum!r} is not a signal a handler can catch")
    previous = signal.getsignal(signum)
    if previous is _on_trigger_signal:
        return
    try:
        signal.signal(signum, _on_trigger_signal)
    except ValueError:
        raise ValueError("forkguard.install_signal_trigger: call it from the main thread") from None
    _trigger_previous[int(signum)] = previous


def uninstall_signal_trigger(signum: int | None = None) -> None:
    """Put back the handler :func:`install_signal_trigger` replaced."""
    import signal

    signum = signal.SIGUSR2 if signum is None else signum
    if signal.getsignal(signum) is _on_trigger_signal:
        signal.signal(signum, _trigger_previous.pop(int(signum)))  # type: ignore[arg-type]


def _on_trigger_signal(signum: int, frame: object) -> None:
    check_fork()
    previous = _trigger_previous.get(signum)
    if callable(previous):
        previous(signum, frame)
