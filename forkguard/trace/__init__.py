"""forkguard.trace: syscall counts and latencies for a process and, with follow_forks, all it forks.

    with forkguard.trace.Tracer(pid, follow_forks=True) as tracer:
        ...
        snapshot = tracer.snapshot()

The counts are exact aggregates kept in the kernel (never reduced by
sampling); ``snapshot()`` returns plain data, which the CLI only renders.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from .._procfs import comm
from . import syscalls as _syscalls

HIST_BUCKETS = 32


class TraceError(Exception):
    """Tracing cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class SyscallStats:
    """One syscall's aggregate over everything traced. ``histogram[b]`` counts latencies in [2^b, 2^(b+1)) ns."""

    nr: int
    name: str
    count: int
    errors: int
    total_ns: int
    max_ns: int
    histogram: tuple[int, ...]

    @property
    def avg_ns(self) -> float:
        return self.total_ns / self.count if self.count else 0.0

    def percentile_ns(self, q: float) -> int:
        """Upper bound of the log2 bucket holding the q-th quantile (0 < q <= 1)."""
        return percentile_ns(self.histogram, q)


@dataclass(frozen=True)
class ProcessStats:
    """One traced process's share: its syscall counts by name."""

    pid: int
    comm: str
    count: int
    errors: int
    total_ns: int
    syscalls: dict[str, int]


@dataclass(frozen=True)
class TraceSnapshot:
    """Everything a tracer knows at one instant."""

    backend: str
    pid: int
    follow_forks: bool
    elapsed_s: float
    syscalls: list[SyscallStats]
    processes_seen: int
    enrolments_dropped: int
    processes: list[ProcessStats] | None = None
    per_process_dropped: int = 0
    events_lost: int = 0
    max_pids: int = 0
    sample: int = 0
    tree: list[dict[str, object]] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def total_count(self) -> int:
        return sum(s.count for s in self.syscalls)

    @property
    def total_errors(self) -> int:
        return sum(s.errors for s in self.syscalls)

    @property
    def total_ns(self) -> int:
        return sum(s.total_ns for s in self.syscalls)

    def count_of(self, name: str) -> int:
        """How many times syscall ``name`` was made (0 if never)."""
        return sum(s.count for s in self.syscalls if s.name == name)

    def to_dict(self) -> dict[str, object]:
        """The stable JSON form (``forkguard/trace/schema.json``)."""
        data = {
            "schema": "forkguard.trace/1",
            "backend": self.backend,
            "pid": self.pid,
            "follow_forks": self.follow_forks,
            "elapsed_s": round(self.elapsed_s, 6),
            "max_pids": self.max_pids,
            "sample": self.sample,
            "processes_seen": self.processes_seen,
            "enrolments_dropped": self.enrolments_dropped,
            "events_lost": self.events_lost,
            "totals": {"count": self.total_count, "errors": self.total_errors, "total_ns": self.total_ns},
            "syscalls": [{**asdict(s), "histogram": list(s.histogram), "avg_ns": round(s.avg_ns, 1),
                          "p50_ns": s.percentile_ns(0.5), "p99_ns": s.percentile_ns(0.99)} for s in self.syscalls],
        }
        if self.processes is not None:
            data["processes"] = [asdict(p) for p in self.processes]
            data["per_process_dropped"] = self.per_process_dropped
        if self.tree is not None:
            data["tree"] = self.tree
        return data


@dataclass(frozen=True)
class SyscallEvent:
    """One sampled syscall: when it returned (s from the start of tracing), who made it, what it returned."""

    at_s: float
    pid: int
    tid: int
    comm: str
    syscall: str
    ret: int
    latency_ns: int


def percentile_ns(histogram: tuple[int, ...] | list[int], q: float) -> int:
    """Upper bound (ns) of the log2 bucket where the q-th quantile falls; 0 for no samples."""
    total = sum(histogram)
    if not total:
        return 0
    rank, seen = q * total, 0
    for bucket, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return 1 << (bucket + 1)
    return 1 << len(histogram)


class Tracer:
    """Trace process ``pid`` (and with ``follow_forks`` every process it forks from now on).

    ``sample``: every N-th syscall also becomes an event (0: aggregate only).
    ``per_process``: keep a breakdown by process too. ``max_pids`` bounds the
    set of traced processes; enrolments that do not fit are counted.
    ``backend``: ``"bpf"`` (exact in-kernel aggregates, needs root or
    CAP_BPF+CAP_PERFMON), ``"ptrace"`` (works unprivileged on your own
    processes, slower), or ``"auto"``: BPF, else ptrace, with the reason in
    ``fallback_reason``. ``tree``: record every traced process's fork, exec and
    exit for the process-tree view (implies ``per_process``).
    """

    MAX_PENDING_EVENTS = 100_000

    BACKENDS = ("auto", "bpf", "ptrace")

    def __init__(self, pid: int, *, follow_forks: bool = False, max_pids: int = 8192, sample: int = 0,
                 per_process: bool = False, backend: str = "bpf", tree: bool = False) -> None:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid must be a positive int, not {pid!r}")
        if isinstance(max_pids, bool) or not isinstance(max_pids, int) or max_pids < 1:
            raise ValueError(f"max_pids must be an int >= 1, not {max_pids!r}")
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
            raise ValueError(f"sample must be an int >= 0 (0: no events), not {sample!r}")
        if backend not in self.BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(self.BACKENDS)}, not {backend!r}")
        self.pid, self.follow_forks, self.max_pids = pid, follow_forks, max_pids
        self.sample, self.per_process, self.backend, self.tree = sample, per_process or tree, backend, tree
        self.fallback_reason: str | None = None
        self._pending: list[SyscallEvent] = []
        self._events_dropped = 0
        self._started_ns = 0
        self._comms: dict[int, str] = {}
        self._backend = None
        self._started = 0.0

    def start(self) -> Tracer:
        """Load and attach; TraceError with one line on failure (nothing left attached)."""
        if not os.path.exists(f"/proc/{self.pid}"):
            raise TraceError(f"no process {self.pid}: check the pid (ps -ef, pgrep)")
        args = (self.pid, self.follow_forks, self.max_pids, self.sample, self.per_process, self.tree)
        self._started_ns = time.monotonic_ns()
        if self.backend in ("auto", "bpf"):
            from .bpf.backend import BPFBackend, explain

            backend = BPFBackend(*args)
            try:
                backend.attach()
            except (OSError, LookupError) as exc:
                if self.backend == "bpf":
                    raise TraceError(explain(exc)) from exc
                self.fallback_reason = explain(exc, ptrace_hint=False)
            else:
                self._backend, self._started, self._started_ns = backend, time.monotonic(), time.monotonic_ns()
                return self
        from .ptrace import PtraceBackend, explain_ptrace

        backend = PtraceBackend(*args)
        try:
            backend.attach()
        except OSError as exc:
            raise TraceError(explain_ptrace(exc, self.pid)) from exc
        self._backend, self._started, self._started_ns = backend, time.monotonic(), time.monotonic_ns()
        return self

    @property
    def backend_name(self) -> str | None:
        """"bpf" or "ptrace" once started."""
        return self._backend.name if self._backend is not None else None

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a traced process the ptrace backend saw end (negative: killed by that signal).

        ptrace reaps its tracees itself, so a command started by this process is waited for through here.
        """
        codes = getattr(self._backend, "exit_codes", None)
        return None if codes is None else codes.get(pid)

    def events(self) -> list[SyscallEvent]:
        """The sampled events (every ``sample``-th syscall) since the last call, oldest first."""
        self.poll()
        events, self._pending = self._pending, []
        return events

    def poll(self) -> None:
        """Collect what the backend has so far (tree records, sampled events); call it often so the tree has
        the command line of short-lived processes (read from /proc when their exec is seen)."""
        if self._backend is None:
            return
        names = _syscalls.names()
        for ts, tid, tgid, nr, ret, latency in self._backend.poll():
            if len(self._pending) >= self.MAX_PENDING_EVENTS:
                self._events_dropped += 1
                continue
            name = self._comms.get(tgid)
            if name is None:
                name = self._comms[tgid] = comm(tgid)
            self._pending.append(SyscallEvent(round((ts - self._started_ns) / 1e9, 6), tgid, tid, name,
                                              names.get(nr, f"syscall_{nr}"), ret, latency))

    def snapshot(self) -> TraceSnapshot:
        """The aggregates so far."""
        if self._backend is None:
            raise TraceError("the tracer is not attached: call start() or use it in a with block")
        self.poll()
        raw = self._backend.read()
        names = _syscalls.names()
        stats = [SyscallStats(nr, names.get(nr, f"syscall_{nr}"), f[0], f[1], f[2], f[3], tuple(f[4:]))
                 for nr, f in raw["syscalls"].items()]
        stats.sort(key=lambda s: (-s.count, s.name))
        counters = raw["counters"]
        processes = None
        if self.per_process:
            processes = []
            for tgid, by_nr in sorted(raw["per_process"].items()):
                count, errors, total = (sum(v[i] for v in by_nr.values()) for i in range(3))
                ranked = sorted(by_nr.items(), key=lambda item: -item[1][0])
                by_name = {names.get(nr, f"syscall_{nr}"): v[0] for nr, v in ranked}
                name = raw["comms"].get(tgid) or comm(tgid)
                processes.append(ProcessStats(tgid, name, count, errors, total, by_name))
        from .bpf import programs

        return TraceSnapshot(
            backend=self._backend.name, pid=self.pid, follow_forks=self.follow_forks,
            elapsed_s=time.monotonic() - self._started, syscalls=stats,
            processes_seen=1 + counters[programs.COUNTER_ENROLLED],
            enrolments_dropped=counters[programs.COUNTER_ENROL_DROPPED], processes=processes,
            per_process_dropped=counters[programs.COUNTER_PROC_DROPPED],
            events_lost=counters[programs.COUNTER_EVENTS_LOST] + self._events_dropped, max_pids=self.max_pids,
            sample=self.sample, tree=self._tree(processes) if self.tree else None,
        )

    def _tree(self, processes: list[ProcessStats] | None) -> list[dict[str, object]]:
        from .tree import tree_records

        totals = {p.pid: p.count for p in processes or []}
        return tree_records(dict(self._backend.processes), self._started_ns, totals)  # type: ignore[union-attr]

    def close(self) -> None:
        """Detach; the target runs on untraced."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> Tracer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()



def spawn_held(argv: list[str]) -> tuple[int, object]:
    """Fork a child that waits, then execs ``argv`` once ``release()`` is called: (pid, release).

    The tracer attaches in between, so the command is traced from its first syscall.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.read(read_end, 1)
        os.close(read_end)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"forkguard trace: cannot run {argv[0]!r}: {exc.strerror}\n".encode())
        os._exit(127)
    os.close(read_end)

    def release() -> None:
        os.write(write_end, b"x")
        os.close(write_end)

    return pid, release
