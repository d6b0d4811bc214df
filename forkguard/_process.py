"""Which process are we in? Detects a new process after *any* fork, cheaply.

``os.register_at_fork`` only sees forks made through CPython's ``os.fork``. A C
extension or ``ctypes`` calling libc ``fork()`` runs no Python hook, so every
forkguard object that holds per-process state calls :func:`check_fork` first.

The check must cost next to nothing, and ``os.getpid()`` is a real syscall
(hundreds of ns in a VM). Instead we keep one private anonymous page marked
``MADV_WIPEONFORK``: the kernel hands every child a zero-filled copy of it, so
"the byte is 0" means "this process has not been seen yet". Where the kernel
refuses the advice (before Linux 4.14, other systems), we fall back to
comparing a cached pid.
"""

from __future__ import annotations

import mmap
import os
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


_page = _wipe_on_fork_page()
_pid = os.getpid()
# Claimed pids: setdefault on a dict is atomic, so when two threads of a freshly
# forked child both notice the fork, exactly one runs the child hooks.
_claims: dict[int, object] = {_pid: object()}
_handler: Callable[[str, int], None] | None = None

DETECTION = "madv_wipeonfork" if _page is not None else "getpid"


def set_new_process_handler(handler: Callable[[str, int], None]) -> None:
    """Install ``handler(via, parent_pid)``, run once in each new process."""
    global _handler
    _handler = handler


def new_process_detected(via: str) -> bool:
    """Claim this process as new and run the handler; False if already claimed."""
    global _pid
    pid = os.getpid()
    token = object()
    if _claims.setdefault(pid, token) is not token:
        return False
    for old in [p for p in _claims if p != pid]:
        # Only this pid matters from now on; dropping inherited pids means a
        # descendant that recycles a dead ancestor's pid is still seen as new.
        _claims.pop(old, None)
    parent_pid, _pid = _pid, pid
    if _page is not None:
        _page[0] = 1
    if _handler is not None:
        _handler(via, parent_pid)
    return True


if _page is not None:

    def check_fork() -> bool:
        """Run the child hooks now if this process is a fork nobody has handled yet.

        Returns True only on the call that discovered the new process. Cheap
        enough for hot paths: one memory read when nothing happened.
        """
        if _page[0]:
            return False
        return new_process_detected("check_fork")

else:

    def check_fork() -> bool:
        """Run the child hooks now if this process is a fork nobody has handled yet.

        Returns True only on the call that discovered the new process.
        """
        if os.getpid() == _pid:
            return False
        return new_process_detected("check_fork")


def current_pid() -> int:
    """The pid of the process forkguard last saw (cached; no syscall)."""
    return _pid
