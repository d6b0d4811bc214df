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

import _thread
import mmap
import os
import sys

from . import _env, _log

TYPE_CHECKING = False  # the typing machinery costs milliseconds at import; type checkers read this as usual
if TYPE_CHECKING:
    from collections.abc import Callable

def _native_get_ident() -> Callable[[], int]:
    """CPython's own ``_thread.get_ident``: which OS thread runs.

    gevent and eventlet replace ``_thread.get_ident`` with one that names the
    running greenlet; forkguard asks which OS thread holds what, since a fork
    keeps exactly one OS thread and every greenlet in it.
    """
    current = _thread.get_ident
    if type(current) is type(len):  # the builtin: nothing patched it (yet)
        return current
    monkey, patcher = sys.modules.get("gevent.monkey"), sys.modules.get("eventlet.patcher")
    try:
        if monkey is not None:
            return monkey.get_original("_thread", "get_ident")  # type: ignore[no-any-return]
        if patcher is not None:
            return patcher.original("_thread").get_ident  # type: ignore[no-any-return]
    except Exception:  # a patcher we cannot ask: fall back to what is there
        pass
    return current


native_ident = _native_get_ident()


def greenlets_patched() -> bool:
    """Whether gevent or eventlet has patched threads into greenlets (in this process, now)."""
    return _thread.get_ident is not native_ident


# include/uapi/asm-generic/mman-common.h; Python 3.11's mmap module lacks the name.
MADV_WIPEONFORK = 18


def _wipe_on_fork_page() -> mmap.mmap | None:
    """Return an armed page the kernel zeroes in each child, or None if unsupported."""
    if not hasattr(mmap, "MAP_PRIVATE") or not hasattr(mmap.mmap, "madvise"):
        return None
    # MADV_WIPEONFORK only applies to private anonymous mappings; Python's
    # default for fileno -1 is MAP_SHARED, which the kernel rejects with EINVAL.
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        # RLIMIT_AS, vm.max_map_count or a seccomp profile refused the page: the
        # pid check does the same job, and importing forkguard must not fail.
        return None
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
# In a child: the (OS) thread ident of the thread whose code goes on after the
# fork, and so whose ``with`` blocks are still open here (a lock it held stays
# held; under gevent or eventlet, so does one any of its greenlets held). None in
# the process that imported forkguard, in a multiprocessing child (it runs its
# target and exits, never returning to the code that forked it), and when a
# libc fork is first noticed by a thread started after it.
_forker: list[int | None] = [None]
# The OS thread that forked this process, whether or not its code goes on here.
_fork_thread: list[int | None] = [None]
# Serialises the first use of each forkguard primitive in a new process (two
# threads must not each make their own copy); made anew with each identity.
_remake_lock = [_thread.allocate_lock()]
# Set in the parent just before an os.fork: False when multiprocessing makes
# the fork (the child runs the target, then os._exit); inherited by the child.
_resumes_forking_code = [True]
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


def _adopt(pid: int, fork_thread: int | None, resumes: bool) -> None:
    """Make ``pid`` this process's identity; the pid it replaces is its parent's."""
    global _parent_pid
    _parent_pid, _identity[0] = _identity[0], pid
    _fork_thread[0] = fork_thread
    _forker[0] = fork_thread if resumes else None
    _remake_lock[0] = _thread.allocate_lock()
    _page[0] = 1


def _new_process_detected() -> bool:
    """check_fork() found a new process: claim it and run the handler; False if another thread won."""
    pid = os.getpid()
    token = object()
    if _claims.setdefault((pid, _identity[0]), token) is not token:
        return False
    # The thread that called fork() is the only one the kernel copied; in the
    # child its thread id is the new pid.
    is_forker = _thread.get_native_id() == pid
    _adopt(pid, native_ident() if is_forker else None, True)
    _after_fork_in_cpython(is_forker)
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
    _adopt(os.getpid(), native_ident(), _resumes_forking_code[0])
    return True


def _after_fork_in_cpython(is_forker: bool) -> None:
    """Run CPython's own child step (``PyOS_AfterFork_Child``) for a fork CPython did not make.

    ``os.fork()`` brackets ``fork()`` with ``PyOS_BeforeFork()`` (which takes the
    import lock) and ``PyOS_AfterFork_Child()``, which re-creates the GIL and the
    import lock, deletes the thread states of threads the child does not have,
    and runs every ``os.register_at_fork`` child hook (threading's, random's,
    logging's, forkguard's). A libc ``fork()`` from C or ctypes skips all of it,
    and the child inherits the GIL's mutex in whatever state a parent thread
    left it: the first call that lets go of the GIL (any I/O) can hang forever.
    So this runs first, and nothing before it may release the GIL (no file
    access, no import, no log line). It must also run while the forking thread
    is still the only one: it deletes every other thread state.
    """
    reason = _after_fork_blocker(is_forker)
    ctypes = sys.modules.get("ctypes")
    if reason is None and ctypes is None:
        try:
            import ctypes  # a fork made by C code that did not load ctypes: importing it is the only way left
        except ImportError as exc:
            reason = f"ctypes cannot be imported ({exc})"
    if reason is not None:
        _log.warning("process %d was forked outside Python (libc fork()) and CPython's after-fork step "
                     "could not run: %s; it may hang. Fork with os.fork(), or call PyOS_BeforeFork(), "
                     "PyOS_AfterFork_Child() and PyOS_AfterFork_Parent() around fork() in C",
                     _identity[0], reason)
        return
    if sys.version_info >= (3, 13):
        # 3.13's PyOS_AfterFork_Child releases the import lock PyOS_BeforeFork
        # took: take it as PyOS_BeforeFork would have (free: checked above).
        sys.modules["_imp"].acquire_lock()
    ctypes.pythonapi.PyOS_AfterFork_Child()


def _after_fork_blocker(is_forker: bool) -> str | None:
    """Why CPython's after-fork step cannot run safely in this libc-forked child, or None.

    Reads only memory and calls nothing that releases the GIL.
    """
    if not is_forker:
        return "check_fork() was first called by a thread started after the fork"
    threading = sys.modules.get("threading")
    if threading is not None and not greenlets_patched():  # under greenlets, _active names greenlets
        # A thread started in the child already has a thread state that the
        # after-fork step would delete. pthread_kill(thread, 0) tells a live
        # thread from one that stayed in the parent, without releasing the GIL.
        me = _thread.get_ident()
        probe = sys.modules["_signal"].pthread_kill
        for ident in list(threading._active):
            if ident != me:
                try:
                    probe(ident, 0)
                except OSError:
                    continue  # a parent thread: gone here
                return "a thread was started in the child before forkguard saw the fork"
    if sys.version_info >= (3, 13) and sys.modules["_imp"].lock_held():
        return "a thread of the parent held the import lock at the fork"
    return None


def forker() -> int | None:
    """OS thread ident of the thread whose code continues after the fork in this child (see ``_forker``)."""
    return _forker[0]


def fork_thread() -> int | None:
    """OS thread ident of the thread that forked this process (None in the first process, or unknown)."""
    return _fork_thread[0]


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

    signum = _catchable_signal(signum, "forkguard.install_signal_trigger")
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

    signum = _catchable_signal(signum, "forkguard.uninstall_signal_trigger")
    if signal.getsignal(signum) is _on_trigger_signal:
        signal.signal(signum, _trigger_previous.pop(int(signum)))  # type: ignore[arg-type]


def _catchable_signal(signum: object, where: str) -> int:
    """SIGUSR2 for None, else ``signum`` if a handler can catch it; TypeError or ValueError in one line."""
    import signal

    if signum is None:
        return int(signal.SIGUSR2)
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"{where}: signum must be a signal number, not {type(signum).__name__}")
    if signum not in signal.valid_signals() or signum in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(f"{where}: {signum!r} is not a signal a handler can catch")
    return signum


def _on_trigger_signal(signum: int, frame: object) -> None:
    check_fork()
    previous = _trigger_previous.get(signum)
    if callable(previous):
        previous(signum, frame)
