"""Memray on a target: native-aware allocation tracking, a leaks flame graph and the top leaking sites.

TARGET is called ``calls`` times in a fresh interpreter under ``memray.Tracker``
with native traces and Python's allocators traced too (so pymalloc's arenas
do not hide which object leaked). What is still allocated when tracking
stops is a leak; sites are ranked by bytes, each named by its innermost frame
outside memray and the allocator. Above ``min_bytes`` the check finds a leak.

memray writes its capture and flame graph into a private temporary directory;
the flame graph (and, if asked, the capture) is then written to the paths the
user gave through ``forkguard._output``, which refuses planted links and
writes devices through.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .._output import OutputError, check_output, write_output
from .options import count, seconds
from .target import Target, parse_target, resolve

MISSING = "memray is not installed: pip install 'forkguard[memray]' (or pip install memray)"
MIN_BYTES = 16384  # what one-time allocations (caches filling, interned names) stay below in 1000 calls


@dataclass
class Site:
    bytes: int
    allocations: int
    where: str
    stack: list[str] = field(default_factory=list)


@dataclass
class MemrayReport:
    target: str
    calls: int
    seconds: float
    flamegraph: str | None
    capture: str | None
    min_bytes: int
    leaked_bytes: int
    sites: list[Site]
    output: dict[str, Any] = field(default_factory=dict)
    crash: dict[str, Any] | None = None  # the target crashed under memray: nothing was written
    hang: dict[str, Any] | None = None  # it did not finish within the timeout: nothing was written

    @property
    def leaking(self) -> bool:
        return self.leaked_bytes > self.min_bytes

    @property
    def found(self) -> bool:
        """A leak above min_bytes, a crash or a hang (the CLI's exit status 1)."""
        return self.leaking or self.crash is not None or self.hang is not None

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "leaking": self.leaking}


def _frames(record) -> list[str]:  # type: ignore[no-untyped-def]
    """Hybrid (Python + native) frames innermost first, falling back to Python frames alone."""
    try:
        frames = record.hybrid_stack_trace()
    except NotImplementedError:
        frames = record.stack_trace()
    return [f"{fn} ({path}:{line})" for fn, path, line in frames]


def _innermost(stack: list[str]) -> str:
    for frame in stack:
        if not frame.startswith(("malloc", "calloc", "realloc", "operator new", "_Py", "Py")) and "memray" not in frame:
            return frame
    return stack[0] if stack else "?"


def memray_check(target: str, output: str, calls: int = 1000, top: int = 10, min_bytes: int = MIN_BYTES,
                 timeout: float = 300.0, capture: str | None = None) -> MemrayReport:
    """Track ``calls`` calls of ``target`` with memray; write the leaks flame graph to ``output``.

    CheckError (or TargetError, OutputError) when it cannot run; nothing is written then.
    """
    from . import CheckError, worker

    try:
        import memray  # noqa: F401
    except ImportError:
        raise CheckError(MISSING) from None
    parsed = parse_target(target)
    calls = count(calls, "calls")
    top = count(top, "top", high=1000)
    min_bytes = count(min_bytes, "min_bytes", low=0, high=1 << 62)
    timeout = seconds(timeout, "timeout")
    for path in (output, capture):
        if path is not None:
            check_output(path)
    start = time.monotonic()
    private = tempfile.mkdtemp(prefix="forkguard-memray-")
    try:
        bin_path, html_path = os.path.join(private, "capture.bin"), os.path.join(private, "leaks.html")
        run = worker.start("memray", parsed, {"capture": bin_path, "calls": calls})
        try:
            code = run.wait(timeout)
            errors = [m["error"] for kind, m in run.drain() if kind == "report" and "error" in m]
            if errors:
                raise CheckError(errors[0])
            outcome = {"crash": worker.crashed(run)} if code is not None and code < 0 else {}
            if code is None:
                outcome = {"hang": worker.hung(run, timeout)}
            elif code > 0:
                raise CheckError(f"the worker running {target} under memray ended with status {code}: "
                                 f"{run.stderr.text().strip()[-300:]}")
        finally:
            run.close()
        output_summary = {"stdout": run.stdout.summary(), "stderr": run.stderr.summary()}
        if outcome:
            return MemrayReport(target, calls, time.monotonic() - start, None, None, min_bytes, 0, [],
                                output_summary, **outcome)
        sites = _sites(bin_path)
        flame = subprocess.run([sys.executable, "-I", "-m", "memray", "flamegraph", "--leaks", "--force",
                                "-o", html_path, bin_path], capture_output=True, text=True, timeout=timeout)
        if flame.returncode != 0:
            raise CheckError(f"memray flamegraph failed: {flame.stderr.strip().splitlines()[-1:]}")
        try:
            with open(html_path, "rb") as f:
                write_output(output, f.read())
            if capture is not None:
                with open(bin_path, "rb") as f:
                    write_output(capture, f.read())
        except OutputError as exc:
            raise CheckError(str(exc)) from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return MemrayReport(target, calls, time.monotonic() - start, output, capture, min_bytes,
                        sum(s.bytes for s in sites), sites[:top], output_summary)


def _sites(capture: str) -> list[Site]:
    from memray import FileReader

    reader = FileReader(capture)
    by_site: dict[str, Site] = {}
    for record in reader.get_leaked_allocation_records(merge_threads=True):
        stack = _frames(record)
        where = _innermost(stack)
        site = by_site.setdefault(where, Site(0, 0, where, stack[:8]))
        site.bytes += record.size
        site.allocations += record.n_allocations
    reader.close()
    return sorted(by_site.values(), key=lambda s: -s.bytes)


def worker(target: Target, options: dict[str, Any], channel) -> None:  # type: ignore[no-untyped-def]
    """Call the target under memray.Tracker (run by ``forkguard.check.worker``)."""
    import memray

    calls = int(options["calls"])
    fn = resolve(target)
    fn()  # imports and first-call caches are not leaks
    with memray.Tracker(options["capture"], native_traces=True, trace_python_allocators=True):
        for _ in range(calls):
            fn()
    channel.send(done=calls)
