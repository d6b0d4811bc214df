"""``forkguard check``: leaks, crashes, hangs and fork safety of native extensions, one subcommand each."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import ForkguardError

TARGET_HELP = "module:function, path/to/file.py:function, or a script path (run as __main__ on each call)"
SPARKS = "▁▂▃▄▅▆▇█"


class CheckCommand:
    name = "check"
    help = "find leaks, crashes and hangs in native extensions, alone and across fork"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = (
            "examples:\n"
            "  forkguard check leaks mypkg.native:roundtrip --rounds 12\n"
            "  forkguard check memray tests/leaky.py:call -o leaks.html   # needs forkguard[memray]\n"
            "  forkguard check valgrind -- python -c 'import mypkg; mypkg.run()'\n"
            "  forkguard check crash -- python tests/segfault.py\n"
            "  forkguard check hang --timeout 10 -- python job.py\n"
            "  forkguard check fork mypkg.native:roundtrip --forks 20\n\n"
            "Exit status: 0 when the check finds nothing, 1 when it finds a leak, crash, hang or unsafe fork,\n"
            "2 when it cannot run (bad TARGET, missing tool)."
        )
        checks = parser.add_subparsers(dest="check", metavar="CHECK")

        leaks = checks.add_parser("leaks", help="call TARGET in rounds and judge whether references, Python "
                                  "allocations or RSS keep growing")
        leaks.add_argument("target", metavar="TARGET", help=TARGET_HELP)
        leaks.add_argument("--rounds", type=int, default=10, metavar="N", help="measured rounds (10, at least 3)")
        leaks.add_argument("--warmup", type=int, default=2, metavar="K", help="rounds run first and left out (2)")
        leaks.add_argument("--calls-per-round", type=int, default=1000, metavar="M", help="calls per round (1000)")
        leaks.add_argument("--plot", metavar="FILE.png", help="draw rounds vs RSS and objects (needs matplotlib)")
        leaks.add_argument("--json", action="store_true", help="print the rounds and the verdict as JSON")
        leaks.set_defaults(_run=self._leaks)

        memray = checks.add_parser("memray", help="track TARGET's allocations with memray (native stacks): leaks "
                                   "flame graph and top leaking sites; needs forkguard[memray]")
        memray.add_argument("target", metavar="TARGET", help=TARGET_HELP)
        memray.add_argument("--calls", type=int, default=1000, metavar="M", help="calls while tracking (1000)")
        memray.add_argument("-o", "--output", default="forkguard-leaks.html", metavar="FILE.html",
                            help="flame graph to write (forkguard-leaks.html; the capture goes beside it as .bin)")
        memray.add_argument("--top", type=int, default=10, metavar="N", help="leaking sites to list (10)")
        memray.add_argument("--json", action="store_true", help="print the summary as JSON")
        memray.set_defaults(_run=self._memray)

        valgrind = checks.add_parser("valgrind", help="run a command under memcheck; report only the losses that "
                                     "reach non-interpreter code")
        valgrind.add_argument("--json", action="store_true", help="print the losses as JSON")
        valgrind.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
        valgrind.set_defaults(_run=self._valgrind)

        crash = checks.add_parser("crash", help="run a command with faulthandler, and under gdb when it crashes: "
                                  "signal, Python and native stacks")
        crash.add_argument("--json", action="store_true", help="print the report as JSON")
        crash.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
        crash.set_defaults(_run=self._crash)

        hang = checks.add_parser("hang", help="run a command; after --timeout dump every thread's Python (and "
                                 "native) stack, then kill it")
        hang.add_argument("--timeout", type=float, default=30.0, metavar="S",
                          help="seconds before the command counts as hung (30); give it before --")
        hang.add_argument("--json", action="store_true", help="print the report as JSON")
        hang.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
        hang.set_defaults(_run=self._hang)

        fork = checks.add_parser("fork", help="call TARGET in children forked early and late (inside a live "
                                 "forkguard context); count clean, failed, crashed and hung children")
        fork.add_argument("target", metavar="TARGET", help=TARGET_HELP)
        fork.add_argument("--forks", type=int, default=10, metavar="N", help="children of each kind (10)")
        fork.add_argument("--timeout", type=float, default=5.0, metavar="S",
                          help="seconds before a child counts as hung (5)")
        fork.add_argument("--json", action="store_true", help="print the counts as JSON")
        fork.set_defaults(_run=self._fork)

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        if getattr(args, "_run", None) is None:
            raise ForkguardError("give a check: leaks, memray, valgrind, crash, hang or fork (forkguard check -h)")
        from ..check import CheckError
        from ..check.target import TargetError

        try:
            return args._run(args)
        except (CheckError, TargetError) as exc:
            raise ForkguardError(str(exc)) from None

    def _leaks(self, args: argparse.Namespace) -> int:
        from ..check import leaks

        if args.plot and not args.plot.endswith(".png"):
            raise ForkguardError(f"--plot writes a PNG: give a FILE.png, not {args.plot!r}")
        if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
            raise ForkguardError(f"cannot write {args.plot}: its directory does not exist")
        start = time.monotonic()
        report = leaks(args.target, args.rounds, args.warmup, args.calls_per_round,
                       progress=_progress_bar if sys.stderr.isatty() and not args.json else None)
        elapsed = time.monotonic() - start
        plot_note = _plot(report, args.plot) if args.plot else ""
        if args.json:
            print(json.dumps({**report.to_dict(), "seconds": round(elapsed, 3)}, indent=2))
        else:
            print(render_leaks(report, elapsed, show_sparklines=not args.plot or bool(plot_note)))
            if plot_note:
                print(plot_note)
        return 1 if report.leaking else 0

    def _memray(self, args: argparse.Namespace) -> int:
        from ..check.memray import memray_check

        start = time.monotonic()
        report = memray_check(args.target, args.output, args.calls, args.top)
        if args.json:
            print(json.dumps({**report.to_dict(), "seconds": round(time.monotonic() - start, 3)}, indent=2))
        else:
            lines = [f"forkguard check memray {report.target}: {report.calls} calls tracked with native stacks, "
                     f"{time.monotonic() - start:.1f} s",
                     f"still allocated when tracking stopped: {_bytes(report.leaked_bytes)} "
                     f"({report.leaked_bytes / report.calls:.1f} B per call)", "",
                     f"{'bytes':>12}  {'allocs':>7}  site"]
            lines += [f"{s.bytes:>12}  {s.allocations:>7}  {s.where}" for s in report.sites]
            lines += ["", f"flame graph (leaks): {report.flamegraph}", f"capture: {report.capture}"]
            print("\n".join(lines))
        return 0

    def _valgrind(self, args: argparse.Namespace) -> int:
        from ..check import valgrind

        start = time.monotonic()
        report = valgrind(_command(args, "valgrind"))
        if args.json:
            print(json.dumps({**report.to_dict(), "seconds": round(time.monotonic() - start, 3)}, indent=2))
            return 1 if report.leaking else 0
        lines = [f"forkguard check valgrind: {' '.join(report.command)} (exit status {report.exit_code}, "
                 f"{time.monotonic() - start:.1f} s under memcheck)",
                 f"{len(report.losses)} loss record(s) reaching non-interpreter code; "
                 f"{report.ignored} inside the interpreter only, ignored"]
        for loss in report.losses:
            lines += ["", f"{loss.kind}: {loss.bytes} bytes in {loss.blocks} block(s)"]
            lines += [f"    {frame}" for frame in loss.stack[:12]]
        print("\n".join(lines))
        return 1 if report.leaking else 0

    def _crash(self, args: argparse.Namespace) -> int:
        from ..check import crash

        report = crash(_command(args, "crash"))
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
            return 1 if report.crashed else 0
        if not report.crashed:
            print(f"forkguard check crash: {' '.join(report.command)} did not crash (exit status {report.exit_code})")
            return 0
        lines = [f"forkguard check crash: {' '.join(report.command)} was killed by {report.signal}", "",
                 "Python stacks (faulthandler):"]
        lines += [f"  {frame}" for frame in report.python_stack] or ["  (none printed)"]
        lines += ["", "native stack (gdb, second run):"]
        lines += [f"  {frame}" for frame in report.native_stack] or [f"  {report.native_note or '(none)'}"]
        print("\n".join(lines))
        return 1

    def _hang(self, args: argparse.Namespace) -> int:
        from ..check import hang

        report = hang(_command(args, "hang"), args.timeout)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
            return 1 if report.hung else 0
        if not report.hung:
            print(f"forkguard check hang: {' '.join(report.command)} finished in {report.seconds:.1f} s "
                  f"(exit status {report.exit_code})")
            return 0
        lines = [f"forkguard check hang: {' '.join(report.command)} still running after {args.timeout:g} s: "
                 f"stacks of {len(report.processes)} process(es) taken, then killed"]
        for proc in report.processes:
            lines += ["", f"process {proc.pid}: {proc.command}", "  Python stacks (faulthandler, every thread):"]
            lines += [f"    {frame}" for frame in proc.python_stack] or ["    (none: not a Python process?)"]
            lines.append("  native stacks (gdb):")
            lines += [f"    {frame}" for frame in proc.native_stack] or [f"    {report.native_note or '(none)'}"]
        print("\n".join(lines))
        return 1

    def _fork(self, args: argparse.Namespace) -> int:
        from ..check import fork_stress

        start = time.monotonic()
        report = fork_stress(args.target, args.forks, args.timeout)
        if args.json:
            print(json.dumps({**report.to_dict(), "seconds": round(time.monotonic() - start, 3)}, indent=2))
            return 0 if report.safe else 1
        lines = [f"forkguard check fork {report.target}: {args.forks} children of each kind, "
                 f"{time.monotonic() - start:.1f} s", "",
                 f"{'fork':<7}{'clean':>7}{'failed':>8}{'crashed':>9}{'hung':>6}  features disabled in the child"]
        for kind in (report.early, report.late):
            crashed = sum(kind.crashed.values())
            signals = f" ({', '.join(f'{n} {s}' for s, n in kind.crashed.items())})" if crashed else ""
            lines.append(f"{kind.kind:<7}{kind.clean:>7}{kind.failed:>8}{crashed:>9}{kind.hung:>6}  "
                         f"{', '.join(kind.disabled_features) or '-'}{signals}")
        late = report.late
        if late.clean == late.forks and late.disabled_features:
            lines.append(f"\nlate forks were safe: the late-fork policy disabled {', '.join(late.disabled_features)}")
        elif late.clean != late.forks:
            lines.append("\nlate forks are NOT safe: wrap the native work in a forkguard.Feature context and check "
                         "feature.enabled before using it (see README, 'Contexts and features')")
        if report.early.clean != report.early.forks:
            lines.append("early forks are NOT safe: the target fails in a child even with nothing live at the fork")
        print("\n".join(lines))
        return 0 if report.safe else 1


def _command(args: argparse.Namespace, check: str) -> list[str]:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ForkguardError(f"give a command after --: forkguard check {check} -- python app.py")
    return command


def _progress_bar(done: int, total: int) -> None:
    width = 30
    filled = round(width * done / total)
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] round {done}/{total}", end=end, file=sys.stderr, flush=True)


def sparkline(values: list[float]) -> str:
    """Values as block characters scaled between their min and max."""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[round((v - low) / (high - low) * (len(SPARKS) - 1))] for v in values)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def render_leaks(report, elapsed: float, show_sparklines: bool = True) -> str:  # type: ignore[no-untyped-def]
    """The leak report as a person reads it: trends, sparklines, what grew, the verdict."""
    measured = [r for r in report.rounds if not r.warmup]
    warmups = len(report.rounds) - len(measured)
    lines = [f"forkguard check leaks {report.target}: {len(measured)} rounds x {report.calls_per_round} calls "
             f"({warmups} warm-up round(s) left out), {elapsed:.1f} s", "",
             f"{'metric':<14}{'per call':>12}{'per round':>14}{'t':>9}  verdict"]
    names = {"rss_bytes": "RSS", "traced_bytes": "Python heap", "objects": report.total_refs_source}
    for t in report.trends:
        unit = _bytes if t.metric != "objects" else (lambda v: f"{v:.2f}")
        tstat = "exact" if abs(t.t_statistic) >= 1e9 else f"{t.t_statistic:.1f}"
        lines.append(f"{names[t.metric]:<14}{unit(t.per_call):>12}{unit(t.per_round):>14}{tstat:>9}  "
                     f"{'LEAK' if t.leaking else 'ok'}")
    if show_sparklines:
        lines.append("")
        for metric, fmt in (("rss_bytes", _bytes), ("traced_bytes", _bytes), ("objects", str)):
            values = [float(getattr(r, metric)) for r in measured]
            lines.append(f"{names[metric]:<14}{sparkline(values)}  {fmt(values[0])} -> {fmt(values[-1])}")
    last = measured[-1]
    if last.grown_types:
        lines.append("\ntypes that grew in the last round: "
                     + ", ".join(f"{name} +{n}" for name, n in last.grown_types.items()))
    if last.growth_sites:
        lines.append("top growth sites in the last round (tracemalloc): " + "; ".join(last.growth_sites))
    lines.append(f"max RSS: {_bytes(max(r.max_rss_bytes for r in report.rounds))}")
    leaking = [t for t in report.trends if t.leaking]
    if leaking:
        lines.append("\nverdict: LEAK: " + ", ".join(
            f"{names[t.metric]} grows {_bytes(t.per_call) if t.metric != 'objects' else f'{t.per_call:.2f}'} per call"
            for t in leaking))
        if {"rss_bytes", "traced_bytes"} <= {t.metric for t in leaking}:
            lines.append("(RSS growth includes tracemalloc's own bookkeeping for each leaked Python block)")
    else:
        lines.append("\nverdict: no leak (no metric kept growing significantly over the measured rounds)")
    return "\n".join(lines)


def _plot(report, path: str) -> str:  # type: ignore[no-untyped-def]
    """Write rounds vs RSS and objects to ``path``; a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): sparklines shown instead of --plot"
    measured = [r for r in report.rounds if not r.warmup]
    xs = [r.index for r in measured]
    fig, (rss, objects) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
    rss.plot(xs, [r.rss_bytes / 2**20 for r in measured], marker="o")
    rss.set_ylabel("RSS (MiB)")
    objects.plot(xs, [r.objects for r in measured], marker="o", color="tab:orange")
    objects.set_ylabel(report.total_refs_source)
    objects.set_xlabel("round")
    fig.suptitle(f"forkguard check leaks {report.target}")
    try:
        fig.savefig(path)
    except OSError as exc:
        raise ForkguardError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    print(f"plot: {os.path.abspath(path)}", file=sys.stderr)
    return ""
