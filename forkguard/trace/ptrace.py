"""The ptrace backend: the same aggregates as the BPF one, where BPF is not allowed (no root, no CAP_BPF).

One thread of this process is the tracer (ptrace requests must come from the
thread that attached). It seizes every thread of the target, stops at each
syscall entry and exit (``PTRACE_SYSCALL``), reads the syscall number and
return value with ``PTRACE_GET_SYSCALL_INFO``, and times the pair. Signals
meant for a tracee are passed on, group-stops are honoured with
``PTRACE_LISTEN``, ``exec`` moves a thread's state to the leader's tid, and
with ``follow_forks`` children are traced from their first instruction (the
kernel attaches them: ``PTRACE_O_TRACEFORK|VFORK|CLONE``). ``close()``
interrupts and detaches every tracee; a process attached with ``-p`` runs on
untraced. Each syscall costs two stops and three syscalls of the tracer: the
price of ptrace.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import signal
import struct
import threading
import time

from .._procfs import cmdline, comm
from .bpf import programs
from .tree import new_process

PTRACE_CONT, PTRACE_SYSCALL, PTRACE_DETACH = 7, 24, 17
PTRACE_SETOPTIONS, PTRACE_GETEVENTMSG = 0x4200, 0x4201
PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_LISTEN, PTRACE_GET_SYSCALL_INFO = 0x4206, 0x4207, 0x4208, 0x420E
O_TRACESYSGOOD, O_TRACEFORK, O_TRACEVFORK, O_TRACECLONE, O_TRACEEXEC = 0x1, 0x2, 0x4, 0x8, 0x10
EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_EXEC, EVENT_STOP = 1, 2, 3, 4, 128
SYSCALL_INFO_ENTRY, SYSCALL_INFO_EXIT = 1, 2
WALL, WNOTHREAD = 0x40000000, 0x20000000
SYSCALL_TRAP = signal.SIGTRAP | 0x80
STOP_SIGNALS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
# struct ptrace_syscall_info: op, pad[3], arch, ip, sp, then entry {nr, args[6]} or exit {rval, is_error}
INFO_SIZE = 88
ENTRY = struct.Struct("<B23xQ")  # op, nr
EXIT = struct.Struct("<B23xqB")  # op, rval, is_error
HIST_BUCKETS = programs.HIST_BUCKETS
EVENT_QUEUE = 65536

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_ptrace.restype = ctypes.c_long
# The hot path's own handle, without argtypes (0.4 us less a call): only small ints and ctypes buffers go
# through it, and libffi widens an int argument to the full register ptrace's va_arg reads.
_ptrace_fast = ctypes.CDLL(None, use_errno=True).ptrace


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    """ptrace(2); OSError on failure."""
    result = _ptrace(request, pid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return result


def _tgid_of(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


class PtraceBackend:
    """Counts syscalls by stopping the tracees at each one (see the module docstring)."""

    name = "ptrace"

    def __init__(self, pid: int, follow_forks: bool, max_pids: int, sample: int, per_process: bool,
                 tree: bool = False) -> None:
        self.pid, self.follow_forks, self.max_pids = pid, follow_forks, max_pids
        self.sample, self.per_process = sample, per_process
        self.stats: dict[int, list[int]] = {}
        self.proc_stats: dict[tuple[int, int], list[int]] = {}
        self.counters = [0] * programs.N_COUNTERS
        self.processes: dict[int, dict[str, object]] = {}  # tgid -> the tree view's record
        self.exit_codes: dict[int, int] = {}  # tgid -> exit code (negative: killed by that signal)
        self.events: collections.deque[tuple[int, int, int, int, int, int]] = collections.deque()
        self._tgid: dict[int, int] = {}  # tid -> tgid of every tracee
        self._entry: dict[int, tuple[int, int]] = {}  # tid -> (nr, start ns) of the syscall under way
        self._detach_on_stop: set[int] = set()
        # A new task is announced twice, in either order: its parent's fork/clone event and its own first stop.
        self._announced: set[int] = set()  # by the parent, first stop still to come
        self._early: set[int] = set()  # stopped first, the parent's event still to come
        self._sample_count = 0
        self._stopping = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._wake_fd = -1
        self._wake_pid = 0
        self._thread: threading.Thread | None = None
        self._options = O_TRACESYSGOOD | O_TRACECLONE | O_TRACEEXEC
        if follow_forks:
            self._options |= O_TRACEFORK | O_TRACEVFORK

    def attach(self) -> None:
        """Start the tracer thread and wait until every thread of the target is seized (or raise why not)."""
        self._thread = threading.Thread(target=self._run, name="forkguard-ptrace", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        try:
            self._seize_all()
            self._start_waker()
        except BaseException as exc:
            self._error = exc
            self._detach_all()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except BaseException as exc:
            self._error = exc
        finally:
            self._detach_all()
            if self._wake_pid:  # every tracee is gone: the waker is not needed
                os.kill(self._wake_pid, signal.SIGKILL)
                try:
                    os.waitpid(self._wake_pid, WALL | WNOTHREAD)
                except ChildProcessError:
                    pass

    def _seize_all(self) -> None:
        """Seize every thread of the target (again until no new thread shows up), then interrupt each."""
        now = time.monotonic_ns()
        self.processes[self.pid] = new_process(self.pid, None, now)
        while True:
            try:
                tids = {int(t) for t in os.listdir(f"/proc/{self.pid}/task")}
            except OSError:
                raise ProcessLookupError(f"no process {self.pid}") from None
            new = tids - self._tgid.keys()
            if not new:
                break
            for tid in sorted(new):
                try:
                    ptrace(PTRACE_SEIZE, tid, 0, self._options)
                except OSError as exc:
                    if exc.errno == errno.ESRCH:
                        continue
                    raise
                self._tgid[tid] = self.pid
                ptrace(PTRACE_INTERRUPT, tid)

    def _start_waker(self) -> None:
        """A child of this thread that exits when close() writes a byte: it wakes the blocking waitpid."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            os.read(read_end, 1)
            os._exit(0)
        os.close(read_end)
        self._wake_pid, self._wake_fd = pid, write_end

    def _loop(self) -> None:
        waitpid, monotonic_ns, get_errno = os.waitpid, time.monotonic_ns, ctypes.get_errno
        info = ctypes.create_string_buffer(INFO_SIZE)
        fast = _ptrace_fast
        entry, exit_ = ENTRY.unpack_from, EXIT.unpack_from
        stats, entries, tgids = self.stats, self._entry, self._tgid
        proc_stats = self.proc_stats if self.per_process else None
        sample = self.sample
        flags = WALL | WNOTHREAD
        while tgids and not self._stopping:
            tid, status = waitpid(-1, flags)
            now = monotonic_ns()
            if tid == self._wake_pid:
                self._wake_pid = 0
                break
            if (status & 0xFF) == 0x7F and (status >> 8) & 0xFF == SYSCALL_TRAP and status >> 16 == 0:
                # the hot path: a syscall stop
                if fast(PTRACE_GET_SYSCALL_INFO, tid, INFO_SIZE, info) < 0:
                    self._resume(tid, 0)
                    continue
                op, nr = entry(info)
                if op == SYSCALL_INFO_ENTRY:
                    entries[tid] = (nr, now)
                elif op == SYSCALL_INFO_EXIT:
                    started = entries.pop(tid, None)
                    if started is not None:
                        nr, start = started
                        _, rval, is_error = exit_(info)
                        latency = now - start
                        slot = nr if nr < programs.NR_SLOTS - 1 else programs.NR_SLOTS - 1
                        s = stats.get(slot)
                        if s is None:
                            s = stats[slot] = [0] * (4 + HIST_BUCKETS)
                        s[0] += 1
                        s[1] += is_error
                        s[2] += latency
                        if latency > s[3]:
                            s[3] = latency
                        bucket = latency.bit_length() - 1
                        s[4 + (bucket if 0 <= bucket < HIST_BUCKETS else (0 if bucket < 0 else HIST_BUCKETS - 1))] += 1
                        if proc_stats is not None:
                            key = (tgids.get(tid, tid), slot)
                            p = proc_stats.get(key)
                            if p is None:
                                p = proc_stats[key] = [0, 0, 0]
                            p[0] += 1
                            p[1] += is_error
                            p[2] += latency
                        if sample:
                            self._sample_count += 1
                            if self._sample_count % sample == 0:
                                self._event(now, tid, tgids.get(tid, tid), slot, rval, latency)
                if fast(PTRACE_SYSCALL, tid, 0, 0) < 0 and get_errno() != errno.ESRCH:
                    raise OSError(get_errno(), f"ptrace(PTRACE_SYSCALL, {tid}) failed")
                continue
            self._other_stop(tid, status, now)

    def _event(self, now: int, tid: int, tgid: int, nr: int, rval: int, latency: int) -> None:
        if len(self.events) >= EVENT_QUEUE:
            self.counters[programs.COUNTER_EVENTS_LOST] += 1
            return
        self.events.append((now, tid, tgid, nr, rval, latency))

    def _resume(self, tid: int, sig: int, request: int = PTRACE_SYSCALL) -> None:
        if tid in self._detach_on_stop:
            request = PTRACE_DETACH
            self._detach_on_stop.discard(tid)
            self._forget(tid)
        try:
            ptrace(request, tid, 0, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def _forget(self, tid: int) -> None:
        self._tgid.pop(tid, None)
        self._entry.pop(tid, None)

    def _other_stop(self, tid: int, status: int, now: int) -> None:
        """Exits, ptrace events, group-stops and signals: everything but a syscall stop."""
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            tgid = self._tgid.get(tid, tid)
            self._forget(tid)
            if tid == tgid:  # the leader is reported last, with the process's exit status
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
                self.exit_codes[tgid] = code
                record = self.processes.get(tgid)
                if record is not None:
                    record["exit_ns"], record["exit_code"] = now, code
                self.counters[programs.COUNTER_EXITED] += 1
            return
        if not os.WIFSTOPPED(status):
            return
        sig, event = os.WSTOPSIG(status), status >> 16
        if tid in self._announced:
            self._announced.discard(tid)
        elif tid not in self._tgid:  # a new child's first stop, before its parent's event
            self._early.add(tid)
            self._adopt(tid, _tgid_of(tid), None, now)
        if sig == signal.SIGTRAP and event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):
            child = ctypes.c_ulong()
            ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(child))
            new = child.value
            parent_tgid = self._tgid.get(tid, tid)
            if new in self._early:  # already adopted at its first stop: only the parent is news
                self._early.discard(new)
                if new in self.processes and self.processes[new]["ppid"] is None:
                    self.processes[new]["ppid"] = parent_tgid
            else:
                self._announced.add(new)
                child_tgid = parent_tgid if event == EVENT_CLONE and _tgid_of(new) == parent_tgid else new
                self._adopt(new, child_tgid, parent_tgid, now)
            self._resume(tid, 0)
        elif sig == signal.SIGTRAP and event == EVENT_EXEC:
            former = ctypes.c_ulong()
            ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(former))
            if former.value != tid and former.value in self._entry:  # a non-leader thread exec'd
                self._entry[tid] = self._entry.pop(former.value)
                self._tgid.pop(former.value, None)
            record = self.processes.get(self._tgid.get(tid, tid))
            if record is not None:
                command = cmdline(tid)
                record["execs"].append({"ns": now, "cmdline": command})  # type: ignore[union-attr]
                record["cmdline"], record["comm"] = command, comm(tid)
            self._resume(tid, 0)
        elif event == EVENT_STOP:
            if sig in STOP_SIGNALS:  # group-stop: stay stopped until SIGCONT, still traced
                self._resume(tid, 0, PTRACE_LISTEN)
            else:
                self._resume(tid, 0)
        elif sig == signal.SIGTRAP and event:
            self._resume(tid, 0)
        else:  # signal-delivery-stop: the signal was meant for the tracee, pass it on
            self._resume(tid, sig)

    def _adopt(self, tid: int, tgid: int, parent_tgid: int | None, now: int) -> None:
        """A task the kernel attached: a thread of a traced process, or (follow_forks) a new process."""
        self._tgid[tid] = tgid
        if tgid == tid and tgid not in self.processes:
            if not self.follow_forks:
                self._detach_on_stop.add(tid)  # a clone() that made a process, not a thread
                return
            if len(self.processes) >= self.max_pids:
                self.counters[programs.COUNTER_ENROL_DROPPED] += 1
                self._detach_on_stop.add(tid)
                return
            self.processes[tgid] = new_process(tgid, parent_tgid, now)
            self.counters[programs.COUNTER_ENROLLED] += 1

    def _detach_all(self) -> None:
        """Interrupt every tracee and detach at its next stop, passing on a signal it was about to get."""
        self._stopping = True
        pending = set(self._tgid)
        for tid in pending:
            try:
                ptrace(PTRACE_INTERRUPT, tid)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            try:
                tid, status = os.waitpid(-1, WALL | WNOTHREAD)
            except ChildProcessError:
                break
            if tid == self._wake_pid:
                self._wake_pid = 0
                continue
            if not os.WIFSTOPPED(status):
                pending.discard(tid)
                continue
            sig, event = os.WSTOPSIG(status), status >> 16
            if event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):  # a child born during detach: detach it too
                child = ctypes.c_ulong()
                try:
                    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(child))
                    pending.add(child.value)
                except OSError:
                    pass
            passed_on = sig if (not event and sig not in (signal.SIGTRAP, SYSCALL_TRAP)) else 0
            try:
                ptrace(PTRACE_DETACH, tid, 0, passed_on)
            except OSError:
                pass
            pending.discard(tid)
        self._tgid.clear()
        self._entry.clear()

    def poll(self) -> list[tuple[int, int, int, int, int, int]]:
        """The sampled events since the last poll: (ts_ns, tid, tgid, nr, ret, latency_ns)."""
        events = []
        while self.events:
            events.append(self.events.popleft())
        return events

    def read(self) -> dict[str, object]:
        """The numbers now, in the BPF backend's shape."""
        syscalls = {nr: list(v) for nr, v in dict(self.stats).items() if v[0]}
        per_process: dict[int, dict[int, list[int]]] = {}
        for (tgid, nr), v in dict(self.proc_stats).items():
            per_process.setdefault(tgid, {})[nr] = list(v)
        comms = {tgid: str(p["comm"]) for tgid, p in dict(self.processes).items()}
        return {"syscalls": syscalls, "counters": list(self.counters), "per_process": per_process, "comms": comms}

    def close(self) -> None:
        """Detach from every tracee (they run on untraced) and end the tracer thread."""
        if self._thread is None:
            return
        self._stopping = True
        if self._wake_fd >= 0:
            try:
                os.write(self._wake_fd, b"x")
            except OSError:
                pass
            os.close(self._wake_fd)
            self._wake_fd = -1
        self._thread.join()


def explain_ptrace(exc: OSError, pid: int) -> str:
    """One line that says why ptrace could not attach and what to do."""
    if exc.errno == errno.EPERM:
        return (f"not allowed to ptrace process {pid}: trace your own processes, run as root, or lower "
                "kernel.yama.ptrace_scope (a container needs --cap-add=SYS_PTRACE)")
    if isinstance(exc, ProcessLookupError) or exc.errno == errno.ESRCH:
        return f"no process {pid}: check the pid (ps -ef, pgrep)"
    return f"ptrace failed: {exc.strerror or exc}"
