"""``forkguard trace``: syscall counts and latencies of a process and, with --follow-forks, its descendants."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict

from .._procfs import running
from . import ForkguardError


class TraceCommand:
    name = "trace"
    help = "count and time the syscalls of a process (and, with --follow-forks, of every process it forks)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = (
            "examples:\n"
            "  forkguard trace -p 1234                       # one process, until Ctrl-C\n"
            "  forkguard trace --follow-forks -- make -j2    # a command and all it forks\n"
            "  forkguard trace -f --per-process --format json -- python job.py\n"
            "  forkguard trace -f --tree -- make -j2                # who forked and exec'd what\n"
            "  forkguard trace --events --sample 100 -p 1234        # every 100th syscall, live\n"
            "  forkguard trace -f --format openmetrics -o /var/lib/node_exporter/fg.prom --interval 15 -p 1234\n\n"
            "Counts are exact aggregates kept in the kernel (eBPF, needs root or CAP_BPF+CAP_PERFMON);\n"
            "where BPF cannot load, the ptrace backend counts the same things (slower; your own processes,\n"
            "or any as root). With a command, the exit status is the command's."
        )
        target = parser.add_mutually_exclusive_group()
        target.add_argument("-p", "--pid", type=int, help="trace this running process")
        parser.add_argument("-f", "--follow-forks", action="store_true",
                            help="also trace every process the target forks from now on, across exec")
        parser.add_argument("--backend", choices=("auto", "bpf", "ptrace"), default="auto",
                            help="auto: BPF, else ptrace with a one-line notice (default)")
        parser.add_argument("--max-pids", type=int, default=8192, metavar="N",
                            help="bound on traced processes; enrolments past it are counted and reported (8192)")
        parser.add_argument("--sample", type=int, default=0, metavar="N",
                            help="also emit every N-th syscall as an event (0: aggregates only); counts never depend "
                                 "on it")
        parser.add_argument("--per-process", action="store_true", help="break the counts down by process")
        parser.add_argument("--tree", action="store_true",
                            help="show the processes the target created: fork, exec and exit times, exit status or "
                                 "signal, command line, syscall totals (in JSON: \"tree\")")
        parser.add_argument("--events", action="store_true",
                            help="print sampled syscalls as they happen (time, pid, comm, syscall, return value, "
                                 "latency): every --sample N-th one (1 if not given); JSON lines with --format json")
        parser.add_argument("--histogram", metavar="SYSCALL", help="draw the latency histogram of this syscall")
        parser.add_argument("--format", choices=("table", "json", "openmetrics"), default="table",
                            help="table (default), json (forkguard/trace/schema.json) or openmetrics (text format "
                                 "for Prometheus; metric names in README)")
        parser.add_argument("-o", "--output", metavar="FILE",
                            help="write the report to FILE instead of stdout, replaced atomically at each --interval "
                                 "(e.g. a node_exporter textfile collector's *.prom)")
        parser.add_argument("--interval", type=float, metavar="S", help="refresh the table every S seconds")
        parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
        parser.add_argument("--top", type=int, default=0, metavar="N", help="show only the N most frequent syscalls")
        parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then a command to start and trace")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from ..trace import TraceError, Tracer, spawn_held

        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if (args.pid is None) == (not command):
            raise ForkguardError("give a process to trace: -p PID, or -- COMMAND [ARGS...]")
        for flag, value, low in (("--max-pids", args.max_pids, 1), ("--sample", args.sample, 0),
                                 ("--top", args.top, 0)):
            if value < low:
                raise ForkguardError(f"{flag} must be >= {low}, not {value}")
        for flag, value in (("--interval", args.interval), ("--duration", args.duration)):
            if value is not None and not value > 0:
                raise ForkguardError(f"{flag} must be a number of seconds > 0, not {value}")
        if args.events and args.sample == 0:
            args.sample = 1
        if args.events and args.format == "openmetrics":
            raise ForkguardError("--events prints lines or JSON lines: use --format table or json with it")
        if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
            raise ForkguardError(f"cannot write {args.output}: its directory does not exist")
        if args.histogram:
            from ..trace.syscalls import number_of

            try:
                number_of(args.histogram)
            except ValueError as exc:
                raise ForkguardError(str(exc)) from None

        child = release = None
        if command:
            child, release = spawn_held(command)
        tracer = Tracer(child or args.pid, follow_forks=args.follow_forks, max_pids=args.max_pids,
                        sample=args.sample, per_process=args.per_process, backend=args.backend, tree=args.tree)
        try:
            tracer.start()
        except TraceError as exc:
            if child:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            raise ForkguardError(str(exc)) from None
        exit_code = 0
        if tracer.fallback_reason:
            print(f"forkguard trace: BPF unavailable ({tracer.fallback_reason}); using the ptrace backend",
                  file=sys.stderr)
        print(f"forkguard trace: tracing pid {tracer.pid}{' and its descendants' if args.follow_forks else ''} "
              f"({'until it exits' if release else 'Ctrl-C to stop'})", file=sys.stderr, flush=True)
        try:
            if release:
                release()
            exit_code = self._wait(args, tracer, child)
            snapshot = tracer.snapshot()
            if args.events:
                self._print_events(args, tracer)
        finally:
            tracer.close()
        self._print(args, snapshot, exit_code if child else None)
        return exit_code

    def _wait(self, args: argparse.Namespace, tracer, child: int | None) -> int:  # type: ignore[no-untyped-def]
        """Until the command or process ends, --duration passes, or Ctrl-C; the command's exit code."""
        deadline = None if args.duration is None else time.monotonic() + args.duration
        next_refresh = None if args.interval is None else time.monotonic() + args.interval
        try:
            while True:
                if child and tracer.backend_name == "ptrace":  # ptrace reaps its tracees itself
                    code = tracer.exit_code(child)
                    if code is not None:
                        return code if code >= 0 else 128 - code
                elif child:
                    done, status = os.waitpid(child, os.WNOHANG)
                    if done:
                        code = os.waitstatus_to_exitcode(status)
                        return code if code >= 0 else 128 - code
                elif not running(args.pid):
                    return 0
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return 0
                if next_refresh is not None and now >= next_refresh:
                    self._print(args, tracer.snapshot(), None, live=True)
                    next_refresh = now + args.interval
                tracer.poll()
                if args.events:
                    self._print_events(args, tracer)
                time.sleep(0.02)
        except KeyboardInterrupt:
            return 130

    def _print_events(self, args: argparse.Namespace, tracer) -> None:  # type: ignore[no-untyped-def]
        lines = []
        if args.format != "json" and not getattr(self, "_events_header", False):
            self._events_header = True
            lines.append(f"{'time_s':>12} {'pid':>7} {'tid':>7} {'comm':<16} {'syscall':<18} {'return':>12} "
                         f"{'latency':>10}")
        for e in tracer.events():
            if args.format == "json":
                lines.append(json.dumps({"type": "event", **asdict(e)}))
            else:
                lines.append(f"{e.at_s:12.6f} {e.pid:>7} {e.tid:>7} {e.comm:<16} {e.syscall:<18} {e.ret:>12} "
                             f"{duration(e.latency_ns):>10}")
        if lines:
            print("\n".join(lines), flush=True)

    def _print(self, args: argparse.Namespace, snapshot, exit_code: int | None, live: bool = False) -> None:  # type: ignore[no-untyped-def]
        if args.format == "json":
            data = snapshot.to_dict()
            if exit_code is not None:
                data["exit_code"] = exit_code
            # one line when it follows events or refreshes, so that the output stays JSON lines
            text = json.dumps(data, indent=None if (live or args.events) and not args.output else 2)
        elif args.format == "openmetrics":
            from ..trace.openmetrics import render as render_openmetrics

            text = render_openmetrics(snapshot).rstrip("\n")
        else:
            text = render(snapshot, top=args.top, histogram=args.histogram)
            if snapshot.tree is not None:
                from ..trace.tree import render_tree

                text += "\n\n" + render_tree(snapshot.tree)
        if args.output:
            from ..trace.openmetrics import write_atomically

            write_atomically(args.output, text + "\n")
            return
        if live and args.format == "table" and sys.stdout.isatty():
            print("\033[H\033[2J", end="")
        print(text, flush=True)
        if live and args.format == "table":
            print(flush=True)


def duration(ns: float) -> str:
    """123 ns, 4.5 us, 6.7 ms, 1.23 s."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def render(snapshot, top: int = 0, histogram: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """The snapshot as the table a person reads."""
    scope = "and every process it forks" if snapshot.follow_forks else "only"
    lines = [f"forkguard trace: pid {snapshot.pid} {scope}; {snapshot.elapsed_s:.2f} s, {snapshot.backend} backend, "
             f"{snapshot.processes_seen} process{'es' if snapshot.processes_seen != 1 else ''} seen", ""]
    header = f"{'syscall':<22}{'count':>10}{'errors':>9}{'total':>11}{'avg':>10}{'max':>10}{'p50':>10}{'p99':>10}"
    lines.append(header)
    rows = snapshot.syscalls[:top] if top else snapshot.syscalls
    for s in rows:
        lines.append(f"{s.name:<22}{s.count:>10}{s.errors:>9}{duration(s.total_ns):>11}{duration(s.avg_ns):>10}"
                     f"{duration(s.max_ns):>10}{'<' + duration(s.percentile_ns(0.5)):>10}"
                     f"{'<' + duration(s.percentile_ns(0.99)):>10}")
    if top and len(snapshot.syscalls) > top:
        lines.append(f"({len(snapshot.syscalls) - top} more syscalls)")
    lines.append(f"{'total':<22}{snapshot.total_count:>10}{snapshot.total_errors:>9}{duration(snapshot.total_ns):>11}")
    if snapshot.enrolments_dropped:
        lines.append(f"\nwarning: {snapshot.enrolments_dropped} process(es) could not be traced: the process map is "
                     f"full (--max-pids {snapshot.max_pids}); their syscalls are not counted")
    if snapshot.events_lost:
        lines.append(f"\nwarning: {snapshot.events_lost} sampled event(s) were lost (the event buffer was full); "
                     "a larger --sample N sends fewer")
    if snapshot.processes is not None:
        lines += ["", f"{'pid':>8}  {'comm':<16}{'count':>10}{'errors':>9}{'total':>11}  top syscalls"]
        for p in sorted(snapshot.processes, key=lambda p: -p.count):
            top3 = ", ".join(f"{name} {n}" for name, n in list(p.syscalls.items())[:3])
            lines.append(f"{p.pid:>8}  {p.comm or '?':<16}{p.count:>10}{p.errors:>9}{duration(p.total_ns):>11}  {top3}")
        if snapshot.per_process_dropped:
            lines.append(f"warning: {snapshot.per_process_dropped} per-process records did not fit")
    if histogram:
        lines += ["", render_histogram(snapshot, histogram)]
    return "\n".join(lines)


def render_histogram(snapshot, name: str) -> str:  # type: ignore[no-untyped-def]
    """The log2 latency histogram of syscall ``name``, as bars."""
    stats = next((s for s in snapshot.syscalls if s.name == name), None)
    if stats is None:
        return f"{name}: no calls traced"
    buckets = [(b, n) for b, n in enumerate(stats.histogram) if n]
    first, last = buckets[0][0], buckets[-1][0]
    peak = max(n for _, n in buckets)
    lines = [f"{name} latency ({stats.count} calls)"]
    for b in range(first, last + 1):
        n = stats.histogram[b]
        low = duration(0 if b == 0 else 1 << b)
        bar = "@" * round(40 * n / peak) if n else ""
        lines.append(f"  [{low:>8}, {duration(1 << (b + 1)):>8})  {n:>8} |{bar}")
    return "\n".join(lines)
