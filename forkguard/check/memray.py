"""Memray on a target: native-aware allocation tracking, a leaks flame graph and the top leaking sites.

TARGET is called ``calls`` times in a fresh interpreter under ``memray.Tracker``
with native traces and ``PYTHONMALLOC=malloc`` (memray's advice for leak
hunting: pymalloc arenas would hide which allocation leaked). What is still
allocated when tracking stops is a leak; sites are ranked by bytes, each named
by its innermost frame outside memray and the allocator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from .target import resolve, worker_env, worker_error

MISSING = "memray is not installed: pip install 'forkguard[memray]' (or pip install memray)"


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
    capture: str
    flamegraph: str
    leaked_bytes: int
    sites: list[Site]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


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


def memray_check(target: str, output: str, calls: int = 1000, top: int = 10) -> MemrayReport:
    """Track ``calls`` calls of ``target`` with memray, write the leaks flame graph to ``output``."""
    from . import CheckError

    try:
        import memray  # noqa: F401
    except ImportError:
        raise CheckError(MISSING) from None
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise CheckError(f"--calls must be an int >= 1, not {calls!r}")
    output = os.path.abspath(output)
    if not os.path.isdir(os.path.dirname(output)):
        raise CheckError(f"cannot write {output}: no directory {os.path.dirname(output)}")
    capture = os.path.splitext(output)[0] + ".bin"
    if os.path.exists(capture):
        os.unlink(capture)
    env = worker_env(PYTHONMALLOC="malloc")
    proc = subprocess.run([sys.executable, "-m", "forkguard.check._memray_worker", target, capture, str(calls)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines or "error" in json.loads(lines[-1]):
        error = json.loads(lines[-1])["error"] if lines else proc.stderr.strip().splitlines()[-1:]
        raise CheckError(str(error))
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
    sites = sorted(by_site.values(), key=lambda s: -s.bytes)
    flame = subprocess.run([sys.executable, "-m", "memray", "flamegraph", "--leaks", "--force", "-o", output, capture],
                           capture_output=True, text=True)
    if flame.returncode != 0:
        raise CheckError(f"memray flamegraph failed: {flame.stderr.strip().splitlines()[-1:]}")
    return MemrayReport(target, calls, capture, output, sum(s.bytes for s in sites), sites[:top])


def worker_main(argv: list[str]) -> int:
    """Call the target under memray.Tracker (run by ``forkguard.check._memray_worker``)."""
    import memray


    target, capture, calls = argv[0], argv[1], int(argv[2])
    try:
        fn = resolve(target)
        fn()  # imports and first-call caches are not leaks
        with memray.Tracker(capture, native_traces=True):
            for _ in range(calls):
                fn()
    except Exception as exc:
        return worker_error(target, exc)
    print(json.dumps({"done": calls}), flush=True)
    return 0
