"""``forkguard check``: leaks, crashes, hangs and fork safety of native extensions, one subcommand each.

Every option is checked before anything runs (``forkguard.check.options``
for numbers, ``target.parse_target`` for TARGET, ``_output.check_output`` for
files, ``_user.lookup_user`` for ``--user``): a bad value is one line and
exit status 2, with no file created and no process started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from . import ForkguardError

TARGET_HELP = "module:function, path/to/file.py:function, or a script path (run as __main__ on each call)"
SCHEMA = "forkguard.check/1"
SPARKS = "▁▂▃▄▅▆▇█"
PLOT_FORMATS = ("png", "svg", "pdf")


def _number(parse: Callable[..., Any], name: str, **limits: Any) -> Callable[[str], Any]:
    """An argparse ``type`` validating with forkguard.check.options, its message naming the option."""

    def convert(text: str) -> Any:
        try:
            return parse(text, name, **limits)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name} ")) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


class CheckCommand:
    name = "check"
    help = "find leaks, crashes and hangs in native extensions, alone and across fork"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        from ..check.memray import MIN_BYTES
        from ..check.options import parse_count, parse_seconds

        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = (
            "examples:\n"
            "  forkguard check leaks mypkg.native:roundtrip --budget 60\n"
            "  forkguard check memray tests/leaky.py:call -o leaks.html   # needs forkguard[memray]\n"
            "  forkguard check valgrind -- python -c 'import mypkg; mypkg.run()'\n"
            "  forkguard check crash --user nobody -- python tests/segfault.py\n"
            "  forkguard check hang --timeout 10 -- python job.py\n"
            "  forkguard check fork mypkg.native:roundtrip --forks 20\n\n"
            "TARGET runs in a fresh interpreter (python -I): the standard library and site-packages come first,\n"
            "then the user's site-packages and PYTHONPATH, then TARGET's directory (a file's own, or the current\n"
            "one for a module).\n"
            "Exit status: 0 when the check finds nothing, 1 when it finds a leak, crash, hang or unsafe fork,\n"
            "2 when it cannot run (bad option or TARGET, missing tool)."
        )
        checks = parser.add_subparsers(dest="check", metavar="CHECK")

        def seconds(name: str, default: float, what: str) -> dict[str, Any]:
            return {"type": _number(parse_seconds, name), "default": default, "metavar": "S",
                    "help": f"{what} ({default:g})"}

        def whole(name: str, default: int, what: str, low: int = 1, high: int = 10**9) -> dict[str, Any]:
            return {"type": _number(parse_count, name, low=low, high=high), "default": default, "metavar": "N",
                    "help": f"{what} ({default})"}

        leaks = checks.add_parser("leaks", help="call TARGET in rounds until RSS, the Python heap and the object "
                                  "count are known to grow or not, with 95%% confidence")
        leaks.add_argument("target", metavar="TARGET", nargs="?", help=TARGET_HELP)
        leaks.add_argument("--budget", **seconds("--budget", 30.0, "seconds to spend measuring; more finds "
                                                 "smaller leaks"))
        leaks.add_argument("--timeout", **seconds("--timeout", 60.0, "seconds one round may take before the "
                                                  "target counts as hung"))
        leaks.add_argument("--plot", metavar="FILE.png", help="draw RSS, Python heap and objects per call with "
                           "the warm-up and the fitted growth (.png, .svg or .pdf; needs matplotlib)")
        leaks.add_argument("--json", action="store_true", help=f"print the report as JSON (schema {SCHEMA})")
        leaks.set_defaults(_run=self._leaks)

        memray = checks.add_parser("memray", help="track TARGET's allocations with memray (native stacks): leaks "
                                   "flame graph and top leaking sites; needs forkguard[memray]")
        memray.add_argument("target", metavar="TARGET", nargs="?", help=TARGET_HELP)
        memray.add_argument("--calls", **whole("--calls", 1000, "calls while tracking"))
        memray.add_argument("-o", "--output", default="forkguard-leaks.html", metavar="FILE.html",
                            help="leaks flame graph to write (forkguard-leaks.html)")
        memray.add_argument("--capture", metavar="FILE.bin", help="also keep memray's capture file there")
        memray.add_argument("--top", **whole("--top", 10, "leaking sites to list", high=1000))
        memray.add_argument("--min-bytes", **whole("--min-bytes", MIN_BYTES, "bytes still allocated above which "
                                                   "the check finds a leak", low=0, high=1 << 62))
        memray.add_argument("--timeout", **seconds("--timeout", 300.0, "seconds the tracked calls may take"))
        memray.add_argument("--json", action="store_true", help=f"print the summary as JSON (schema {SCHEMA})")
        memray.set_defaults(_run=self._memray)

        def command_check(name: str, help: str, timeout: float, what: str) -> argparse.ArgumentParser:
            sub = checks.add_parser(name, help=help)
            sub.add_argument("--timeout", **seconds("--timeout", timeout, what))
            sub.add_argument("-u", "--user", metavar="USER", help="run the command as USER (name or uid: its "
                             "groups, HOME, USER, LOGNAME); the checker keeps its privileges")
            sub.add_argument("--json", action="store_true", help=f"print the report as JSON (schema {SCHEMA})")
            sub.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
            return sub

        command_check("valgrind", "run a command under memcheck; report only the losses that reach "
                      "non-interpreter code", 900.0, "seconds before the command counts as hung"
                      ).set_defaults(_run=self._valgrind)
        command_check("crash", "run a command with faulthandler, and under gdb when it crashes: signal, Python "
                      "and native stacks", 300.0, "seconds before the command counts as hung"
                      ).set_defaults(_run=self._crash)
        command_check("hang", "run a command; after --timeout dump every process's Python and native stacks, "
                      "then kill them all", 30.0, "seconds before the command counts as hung"
                      ).set_defaults(_run=self._hang)

        fork = checks.add_parser("fork", help="call TARGET in children forked early and late (inside a live "
                                 "forkguard context); count clean, failed, crashed and hung children")
        fork.add_argument("target", metavar="TARGET", nargs="?", help=TARGET_HELP)
        fork.add_argument("--forks", **whole("--forks", 10, "children of each kind", high=10_000))
        fork.add_argument("--timeout", **seconds("--timeout", 5.0, "seconds before a child, or the parent's own "
                                                 "fork(), counts as hung"))
        fork.add_argument("--json", action="store_true", help=f"print the counts as JSON (schema {SCHEMA})")
        fork.set_defaults(_run=self._fork)

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        if getattr(args, "_run", None) is None:
            raise ForkguardError("give a check: leaks, memray, valgrind, crash, hang or fork (forkguard check -h)")
        from .._output import OutputError
        from .._user import UserError
        from ..check import CheckError
        from ..check.target import ACCEPTED, TargetError

        if hasattr(args, "target") and args.target is None:
            raise ForkguardError(f"give a TARGET: {ACCEPTED}")
        try:
            return args._run(args)
        except (CheckError, TargetError, OutputError, UserError) as exc:
            raise ForkguardError(str(exc)) from None

    # --- leaks

    def _leaks(self, args: argparse.Namespace) -> int:
        from .._output import write_output
        from ..check import leaks
        from ..check.target import parse_target

        parse_target(args.target)
        plot_format = _plot_format(args.plot, args.json) if args.plot else None
        progress = _Progress() if sys.stderr.isatty() and not args.json else None
        try:
            report = leaks(args.target, args.budget, args.timeout, progress=progress)
        finally:
            if progress:
                progress.close()
        if args.plot:
            write_output(args.plot, _plot(report, plot_format or "png"))
            print(f"plot: {args.plot}", file=sys.stderr)
        if args.json:
            print(json.dumps({"schema": SCHEMA, "check": "leaks", **report.to_dict()}, indent=2))
        else:
            print(render_leaks(report))
        return 1 if report.found else 0

    # --- memray

    def _memray(self, args: argparse.Namespace) -> int:
        from ..check.memray import memray_check

        report = memray_check(args.target, args.output, args.calls, args.top, args.min_bytes, args.timeout,
                              args.capture)
        if args.json:
            print(json.dumps({"schema": SCHEMA, "check": "memray", **report.to_dict()}, indent=2))
            return 1 if report.found else 0
        lines = [f"forkguard check memray {report.target}: {report.calls} calls tracked with native stacks, "
                 f"{report.seconds:.1f} s"]
        if report.crash or report.hang:
            lines += _failure_lines(report.crash, report.hang, "calls under memray")
            print("\n".join(lines))
            return 1
        lines += [f"still allocated when tracking stopped: {_bytes(report.leaked_bytes)} "
                  f"({report.leaked_bytes / report.calls:.1f} B per call)", "",
                  f"{'bytes':>12}  {'allocs':>7}  site"]
        lines += [f"{s.bytes:>12}  {s.allocations:>7}  {s.where}" for s in report.sites]
        lines += ["", f"flame graph (leaks): {report.flamegraph}"]
        if report.capture:
            lines.append(f"capture: {report.capture}")
        lines += _output_lines(report.output)
        lines.append(f"\nverdict: LEAK: {_bytes(report.leaked_bytes)} still allocated, above --min-bytes "
                     f"{report.min_bytes}" if report.leaking else
                     f"\nverdict: no leak: {_bytes(report.leaked_bytes)} still allocated, at most --min-bytes "
                     f"{report.min_bytes}")
        print("\n".join(lines))
        return 1 if report.found else 0

    # --- valgrind, crash, hang

    def _valgrind(self, args: argparse.Namespace) -> int:
        from ..check import valgrind

        report = valgrind(_command(args, "valgrind"), args.timeout, args.user)
        if args.json:
            print(json.dumps({"schema": SCHEMA, "check": "valgrind", **report.to_dict()}, indent=2))
            return 1 if report.found else 0
        if report.hang:
            print(render_hang(report.hang, "valgrind"))
            return 1
        lines = [f"forkguard check valgrind: {' '.join(report.command)}{_as(report.user)} (exit status "
                 f"{report.exit_code}, {report.seconds:.1f} s under memcheck)",
                 f"{len(report.losses)} loss record(s) reaching non-interpreter code, {report.leaked_bytes} bytes "
                 f"lost; {report.ignored} inside the interpreter only, ignored"]
        for loss in report.losses:
            held = f" (and {loss.indirect_bytes} bytes it points to, counted below)" if loss.indirect_bytes else ""
            lines += ["", f"{loss.kind}: {loss.bytes} bytes in {loss.blocks} block(s){held}"]
            lines += [f"    {frame}" for frame in loss.stack[:12]]
        print("\n".join(lines))
        return 1 if report.found else 0

    def _crash(self, args: argparse.Namespace) -> int:
        from ..check import crash

        report = crash(_command(args, "crash"), args.timeout, args.user)
        if args.json:
            print(json.dumps({"schema": SCHEMA, "check": "crash", **report.to_dict()}, indent=2))
            return 1 if report.found else 0
        if report.hang:
            print(render_hang(report.hang, "crash"))
            return 1
        who = f"{' '.join(report.command)}{_as(report.user)}"
        if not report.crashed:
            lines = [f"forkguard check crash: {who} did not crash (exit status {report.exit_code}, "
                     f"{report.seconds:.1f} s)"]
        else:
            lines = [f"forkguard check crash: {who} was killed by {report.signal}", "",
                     "Python stacks (faulthandler):"]
            lines += [f"  {frame}" for frame in report.python_stack] or ["  (none printed)"]
            lines += ["", "native stack (gdb, second run):"]
            lines += [f"  {frame}" for frame in report.native_stack] or [f"  {report.native_note or '(none)'}"]
        # A crash's stderr is mostly faulthandler's dump, shown above: only its size then.
        output = report.output
        if report.crashed:
            output = {**output, "stderr": {**output["stderr"], "tail": []}}
        lines += _output_lines(output) + _left_lines(report.left_running)
        print("\n".join(lines))
        return 1 if report.found else 0

    def _hang(self, args: argparse.Namespace) -> int:
        from ..check import hang

        report = hang(_command(args, "hang"), args.timeout, args.user)
        if args.json:
            print(json.dumps({"schema": SCHEMA, "check": "hang", **report.to_dict()}, indent=2))
            return 1 if report.hung else 0
        print(render_hang(report, "hang"))
        return 1 if report.hung else 0

    # --- fork

    def _fork(self, args: argparse.Namespace) -> int:
        from ..check import fork_stress

        report = fork_stress(args.target, args.forks, args.timeout)
        if args.json:
            print(json.dumps({"schema": SCHEMA, "check": "fork", **report.to_dict()}, indent=2))
            return 0 if report.safe else 1
        lines = [f"forkguard check fork {report.target}: {args.forks} children of each kind, "
                 f"{report.seconds:.1f} s", "",
                 f"{'fork':<7}{'clean':>7}{'failed':>8}{'crashed':>9}{'hung':>6}  features disabled in the child"]
        for kind in (report.early, report.late):
            crashed = sum(kind.crashed.values())
            signals = f" ({', '.join(f'{n} {s}' for s, n in kind.crashed.items())})" if crashed else ""
            lines.append(f"{kind.kind:<7}{kind.clean:>7}{kind.failed:>8}{crashed:>9}{kind.hung:>6}  "
                         f"{', '.join(kind.disabled_features) or '-'}{signals}")
        if report.parent_hang:
            lines += _parent_hang_lines(report.parent_hang)
        if report.crash:
            lines += _failure_lines(report.crash, None, "forks (in the thread calling it in the parent)")
        late = report.late
        if late.clean == late.forks and late.disabled_features:
            lines.append(f"\nlate forks were safe: the late-fork policy disabled {', '.join(late.disabled_features)}")
        elif late.clean != late.forks and not (report.parent_hang or report.crash):
            lines.append("\nlate forks are NOT safe: wrap the native work in a forkguard.Feature context and check "
                         "feature.enabled before using it (see README, 'Contexts and features')")
        if report.early.clean != report.early.forks and not (report.parent_hang or report.crash):
            lines.append("early forks are NOT safe: the target fails in a child even with nothing live at the fork")
        lines += _output_lines(report.output)
        print("\n".join(lines))
        return 0 if report.safe else 1


def _parent_hang_lines(hang: dict[str, Any]) -> list[str]:
    handler = hang["fork_handler"]
    where = (f"\nthe {hang['kind']} fork #{hang['index'] + 1} did not return within {hang['timeout']:g} s: the "
             "parent's own fork() is stuck")
    if hang["waiting_for"] != "fork":
        where = f"\nthe worker made no progress for {hang['timeout']:g} s (waiting for a {hang['waiting_for']})"
    lines = [where + (f" in the at-fork handler {handler['function']} of {handler['library']}" if handler else "")]
    if handler:
        lines.append("  (a pthread_atfork handler that waits for a thread which waits for the GIL: fork before "
                     "starting that library's threads, or switch them off, e.g. OPENBLAS_NUM_THREADS=1)")
    lines += _process_lines(hang["processes"])
    return lines


def _process_lines(processes: list[Any]) -> list[str]:
    lines = []
    for proc in processes:
        proc = proc if isinstance(proc, dict) else proc.__dict__
        lines += ["", f"process {proc['pid']}: {proc['command']}", "  Python stacks (faulthandler, every thread):"]
        lines += [f"    {frame}" for frame in proc["python_stack"]] or [
            "    (none: not a Python process, or it does not catch SIGUSR1 with forkguard's hook)"]
        lines.append("  native stacks (gdb):")
        lines += [f"    {frame}" for frame in proc["native_stack"]] or [f"    {proc['native_note'] or '(none)'}"]
    return lines


def render_hang(report, check: str) -> str:  # type: ignore[no-untyped-def]
    """A HangReport as text: finished, or each process's stacks before the kill."""
    who = f"{' '.join(report.command)}{_as(report.user)}"
    if not report.hung:
        lines = [f"forkguard check {check}: {who} finished in {report.seconds:.1f} s (exit status {report.exit_code})"]
        return "\n".join(lines + _output_lines(report.output) + _left_lines(report.left_running))
    lines = [f"forkguard check {check}: {who} still running after {report.timeout:g} s (a hang): stacks of "
             f"{len(report.processes)} process(es) taken, then all {len(report.left_running)} killed"]
    lines += _process_lines(report.processes)
    return "\n".join(lines + _output_lines(report.output))


def _failure_lines(crash: dict[str, Any] | None, hang: dict[str, Any] | None, during: str) -> list[str]:
    if crash:
        lines = [f"\nthe target was killed by {crash['signal']} during the {during}: {crash['hint']}",
                 "Python stacks (faulthandler):"]
        return lines + [f"  {frame}" for frame in crash["python_stack"]]
    assert hang is not None
    return [f"\nthe target made no progress for {hang['timeout']:g} s (--timeout) during the {during}: a hang",
            *_process_lines(hang["processes"])]


def _as(user: str | None) -> str:
    return f" (as {user})" if user else ""


def _output_lines(output: dict[str, Any]) -> list[str]:
    """What the command or target printed: counts and the last lines of each stream."""
    lines = []
    for stream in ("stdout", "stderr"):
        summary = output.get(stream) or {}
        if summary.get("bytes"):
            last = "; the last:" if summary["tail"] else ""
            lines.append(f"\n{stream}: {summary['lines']} line(s), {_bytes(summary['bytes'])}{last}")
            lines += [f"  | {line}" for line in summary["tail"][-5:]]
    return lines


def _left_lines(left: list[int]) -> list[str]:
    pids = ", ".join(map(str, left))
    return [f"\n{len(left)} process(es) it started were still running when it ended: killed ({pids})"] if left else []


def _command(args: argparse.Namespace, check: str) -> list[str]:
    if args.command[:1] != ["--"]:
        raise ForkguardError(f"put the command after --: forkguard check {check} [options] -- COMMAND [ARGS...]"
                             + (f" (got {args.command[0]!r})" if args.command else ""))
    return args.command[1:]


def _plot_format(path: str, as_json: bool) -> str:
    """The format --plot writes, checked (with the path) before any target runs."""
    from .._output import check_output

    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if path == "-" or path.startswith(("/dev/", "/proc/self/fd/")):
        extension = "png"
    if extension not in PLOT_FORMATS:
        raise ForkguardError(f"--plot: give FILE.png, FILE.svg or FILE.pdf (or - for PNG on stdout), not {path!r}")
    if path == "-" and as_json:
        raise ForkguardError("--plot - and --json would both write to stdout: give --plot a file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ForkguardError("--plot needs matplotlib: pip install 'forkguard[plot]'") from None
    check_output(path)
    return extension


class _Progress:
    """A progress bar by time on stderr (a terminal): drawn before round 1, erased before anything else prints."""

    def __init__(self) -> None:
        self.drawn = False

    def __call__(self, elapsed: float, budget: float, rounds: int) -> None:
        width = 30
        filled = min(width, round(width * elapsed / budget))
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {elapsed:5.1f}/{budget:g} s, round {rounds}",
              end="", file=sys.stderr, flush=True)
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self.drawn = False


def sparkline(values: list[float]) -> str:
    """Values as block characters scaled between their min and max."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[round((v - low) / (high - low) * (len(SPARKS) - 1))] for v in values)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _per_call(metric: str, value: float) -> str:
    """A growth per call with its unit: two significant digits below 10, nothing below a thousandth."""
    text = "0" if abs(value) < 0.001 else f"{value:.2g}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{text} objects" if metric == "objects" else f"{text} B"


def _verdict_text(trend) -> str:  # type: ignore[no-untyped-def]
    """``LEAK``, ``clean: < 0.5 B/call`` or ``undecided`` for one metric."""
    unit = "/call" if trend.metric != "objects" else " per call"
    if trend.verdict == "leak":
        return "LEAK"
    if trend.verdict == "clean":
        if trend.high <= 0:
            return "clean: no growth"
        bound = f"< {_per_call(trend.metric, max(trend.high, 0.001))}{unit}"
        return f"clean: {bound}" if trend.low <= 0 else f"grows, below the floor: {bound}"
    return "undecided" + (f" (floor {_per_call(trend.metric, trend.floor)}{unit})" if trend.floor else "")


def render_leaks(report) -> str:  # type: ignore[no-untyped-def]
    """The leak report as a person reads it: growth per call with its interval, sparklines, the verdict."""
    from ..check.leaks import NAMES

    rounds = report.rounds
    calls = rounds[-1].total_calls if rounds else 0
    lines = [f"forkguard check leaks {report.target}: {calls:,} calls in {len(rounds)} rounds, {report.seconds:.1f} s "
             f"(budget {report.budget:g} s)", "",
             f"{'metric':<13}{'growth per call':>16}  {'95% interval':<24}verdict"]
    for t in report.trends:
        if t.per_call is None:
            lines.append(f"{NAMES[t.metric]:<13}{'-':>16}  {'':<24}not measured")
            continue
        interval = f"[{_per_call(t.metric, t.low)}, {_per_call(t.metric, t.high)}]"
        lines.append(f"{NAMES[t.metric]:<13}{_per_call(t.metric, t.per_call):>16}  {interval:<24}{_verdict_text(t)}")
    lines.append("")
    for metric, phase, fmt in (("rss_bytes", "rss", _bytes), ("traced_bytes", "heap", _bytes),
                               ("objects", "rss", lambda v: f"{v:.0f}")):
        values = [float(getattr(r, metric)) for r in rounds if r.phase == phase]
        if values:
            lines.append(f"{NAMES[metric]:<13}{sparkline(values)}  {fmt(values[0])} -> {fmt(values[-1])}")
    if rounds:
        lines.append(f"max RSS: {_bytes(max(r.max_rss_bytes for r in rounds))}")
    if report.grown_types and any(t.metric == "objects" and t.leaking for t in report.trends):
        lines.append("types that grew: " + ", ".join(f"{name} +{n}" for name, n in report.grown_types.items()))
    if report.growth_sites:
        lines.append("Python heap growth by line (tracemalloc): " + "; ".join(report.growth_sites))
    lines += _output_lines(report.output)
    if report.refcount_note:
        lines.append(f"note: {report.refcount_note}")
    lines.append("\nverdict: " + _leak_verdict(report))
    return "\n".join(lines)


def _leak_verdict(report) -> str:  # type: ignore[no-untyped-def]
    from ..check.leaks import NAMES

    if report.crash:
        crash = report.crash
        return (f"CRASHED: the target was killed by {crash['signal']} after {crash['after_calls']:,} calls (round "
                f"{crash['after_rounds'] + 1}); {crash['hint']}\n"
                + "\n".join(f"  {frame}" for frame in crash["python_stack"]))
    if report.hang:
        return "\n".join([f"HUNG: a round made no progress for {report.hang['timeout']:g} s (--timeout) after "
                          f"{report.hang['after_calls']:,} calls", *_process_lines(report.hang["processes"])])
    trends = {t.metric: t for t in report.trends}
    if report.verdict == "leak":
        parts = []
        for t in report.trends:
            if t.leaking:
                unit = " B" if t.metric != "objects" else ""
                parts.append(f"{NAMES[t.metric]} +{_per_call(t.metric, t.per_call).removesuffix(' objects')}/call "
                             f"(95%: {t.low:.3g} to {t.high:.3g}{unit})")
        where = ""
        if trends["rss_bytes"].leaking and trends["traced_bytes"].verdict == "clean":
            where = "\n(native memory: the Python heap does not grow)"
        return "LEAK: " + "; ".join(parts) + where
    bounds = [f"{NAMES[t.metric]}: no growth" if t.high <= 0 else
              f"{NAMES[t.metric]} < {_per_call(t.metric, max(t.high, 0.001))}"
              + ("/call" if t.metric != "objects" else " per call") for t in report.trends if t.high is not None]
    if report.verdict == "clean":
        return "clean: " + ", ".join(bounds) + " with 95% confidence"
    undecided = [NAMES[t.metric] for t in report.trends if t.verdict == "undecided"]
    shown = f" ({', '.join(bounds)} with 95% confidence)" if bounds else ""
    return (f"inconclusive: no leak shown, but {', '.join(undecided)} not below the floor within "
            f"{report.budget:g} s{shown}: give it more --budget")


def _plot(report, fmt: str) -> bytes:  # type: ignore[no-untyped-def]
    """RSS, Python heap and objects against calls: warm-up shaded, the fitted growth drawn, verdicts in titles."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..check.leaks import NAMES

    trends = {t.metric: t for t in report.trends}
    panels = (("rss_bytes", "rss", 2**20, "RSS (MiB)"), ("traced_bytes", "heap", 2**10, "Python heap (KiB)"),
              ("objects", "rss", 1, report.objects_source))
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 8))
    for ax, (metric, phase, scale, label) in zip(axes, panels, strict=True):
        shown = [r for r in report.rounds if getattr(r, metric) is not None]
        ax.plot([r.total_calls for r in shown], [getattr(r, metric) / scale for r in shown], ".", color="0.6",
                markersize=4)
        warm = [r for r in report.rounds if r.phase == ("warmup" if phase == "rss" else "heap-warmup")]
        if warm:
            ax.axvspan(warm[0].total_calls - warm[0].calls, warm[-1].total_calls, color="0.9",
                       label="warm-up (left out)")
        measured = [r for r in report.rounds if r.phase == phase]
        trend = trends[metric]
        if measured and trend.per_call is not None:
            xs = [r.total_calls for r in measured]
            ys = [getattr(r, metric) for r in measured]
            mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
            ax.plot(xs, [(mean_y + trend.per_call * (x - mean_x)) / scale for x in xs],
                    color="tab:red" if trend.leaking else "tab:green",
                    label=f"fitted: {_per_call(metric, trend.per_call)} per call")
        ax.set_title(f"{NAMES[metric]}: {_verdict_text(trend)}", fontsize=10)
        ax.set_ylabel(label)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("calls")
    fig.suptitle(f"forkguard check leaks {report.target}: {report.verdict}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    plt.close(fig)
    return buffer.getvalue()
