"""A trace snapshot in the OpenMetrics text format, written atomically for a node_exporter textfile collector.

Metric families (all prefixed ``forkguard_trace_``):

- ``target_info{backend, pid, follow_forks}`` = 1: what is traced and how;
- ``syscalls_total{syscall}``: completed syscalls; ``syscall_errors_total{syscall}``: those that returned an error;
- ``syscall_latency_seconds{syscall}``: histogram with the tracer's log2 buckets (``le`` = 2^(b+1) ns);
- ``process_syscalls_total{pid, comm}`` (with per-process counts);
- ``processes_seen``, ``enrolments_dropped_total``, ``events_lost_total``, ``elapsed_seconds``.
"""

from __future__ import annotations

import os
import tempfile

PREFIX = "forkguard_trace_"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels.items()) + "}"


def render(snapshot) -> str:  # type: ignore[no-untyped-def]
    """The snapshot as OpenMetrics text, ending with ``# EOF``."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, unit: str = "") -> None:
        out.append(f"# TYPE {PREFIX}{name} {kind}")
        if unit:
            out.append(f"# UNIT {PREFIX}{name} {unit}")
        out.append(f"# HELP {PREFIX}{name} {help_text}")

    family("target", "info", "What forkguard trace is tracing, and with which backend.")
    target = _labels(backend=snapshot.backend, pid=snapshot.pid, follow_forks=str(snapshot.follow_forks).lower())
    out.append(f"{PREFIX}target_info{target} 1")
    family("syscalls", "counter", "Syscalls completed by the traced processes.")
    out += [f"{PREFIX}syscalls_total{_labels(syscall=s.name)} {s.count}" for s in snapshot.syscalls]
    family("syscall_errors", "counter", "Syscalls that returned an error.")
    out += [f"{PREFIX}syscall_errors_total{_labels(syscall=s.name)} {s.errors}" for s in snapshot.syscalls]
    family("syscall_latency_seconds", "histogram", "Syscall latency, entry to exit, in log2 buckets.", "seconds")
    for s in snapshot.syscalls:
        cumulative = 0
        for bucket, n in enumerate(s.histogram):
            cumulative += n
            le = repr((1 << (bucket + 1)) / 1e9)
            out.append(f"{PREFIX}syscall_latency_seconds_bucket{_labels(syscall=s.name, le=le)} {cumulative}")
        out.append(f"{PREFIX}syscall_latency_seconds_bucket{_labels(syscall=s.name, le='+Inf')} {s.count}")
        out.append(f"{PREFIX}syscall_latency_seconds_count{_labels(syscall=s.name)} {s.count}")
        out.append(f"{PREFIX}syscall_latency_seconds_sum{_labels(syscall=s.name)} {s.total_ns / 1e9!r}")
    if snapshot.processes is not None:
        family("process_syscalls", "counter", "Syscalls completed, by traced process.")
        out += [f"{PREFIX}process_syscalls_total{_labels(pid=p.pid, comm=p.comm)} {p.count}"
                for p in snapshot.processes]
    family("processes_seen", "gauge", "Processes traced so far (the target and those it forked).")
    out.append(f"{PREFIX}processes_seen {snapshot.processes_seen}")
    family("enrolments_dropped", "counter", "Processes that could not be traced (--max-pids reached).")
    out.append(f"{PREFIX}enrolments_dropped_total {snapshot.enrolments_dropped}")
    family("events_lost", "counter", "Sampled events dropped because the event buffer was full.")
    out.append(f"{PREFIX}events_lost_total {snapshot.events_lost}")
    family("elapsed_seconds", "gauge", "Seconds since tracing started.", "seconds")
    out.append(f"{PREFIX}elapsed_seconds {snapshot.elapsed_s!r}")
    out.append("# EOF")
    return "\n".join(out) + "\n"


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: readers never see half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".forkguard-trace-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
