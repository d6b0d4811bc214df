"""Fork round trip (fork + _exit + waitpid): bare, 100x3 stdlib at-fork hooks, 100x3 forkguard hooks.

Claim: dispatching hooks through forkguard costs at most 1.15x the same hooks
registered directly with os.register_at_fork.

Measured twice: in a bare interpreter (~12 MB), where the fork itself is as
cheap as it gets, and in a process holding a service-sized heap (--heap-mb of
Python objects), where the page tables the kernel copies dominate. forkguard's
own cost is fixed: the Python it runs in each child dirties a few dozen pages,
each a copy-on-write fault.

    python benchmarks/fork_overhead.py [--rounds 15] [--forks 200] [--heap-mb 150]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HOOKS = 100


def noop_hooks(n: int) -> list:
    return [(lambda: None) for _ in range(n)]


def measure(forks: int) -> float:
    """Median fork round trip in microseconds."""
    times = []
    for _ in range(forks + 20):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - start)
    return statistics.median(times[20:]) * 1e6


def worker(variant: str, forks: int, heap_mb: int) -> None:
    # One CPU for parent and child: the round trip then runs in sequence
    # instead of depending on which core the scheduler picks for the child.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    # A service's heap: many small objects, as a web app's modules and caches make.
    heap = [{"key": str(i), "value": [i, i + 1]} for i in range(heap_mb * 1024 * 1024 // 400)]
    if variant == "stdlib_hooks":
        for before, parent, child in zip(noop_hooks(HOOKS), noop_hooks(HOOKS), noop_hooks(HOOKS), strict=True):
            os.register_at_fork(before=before, after_in_parent=parent, after_in_child=child)
    elif variant in ("forkguard_hooks", "forkguard_no_hooks"):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import forkguard

        if variant == "forkguard_hooks":
            for before, parent, child in zip(noop_hooks(HOOKS), noop_hooks(HOOKS), noop_hooks(HOOKS), strict=True):
                forkguard.register(before=before, after_in_parent=parent, after_in_child=child)
    print(json.dumps({"value": measure(forks), "heap_objects": len(heap)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--heap", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--heap-mb", type=int, default=150, help="heap of the service-sized run (0: skip it)")
    args = parser.parse_args()
    if args.variant:
        worker(args.variant, args.forks, args.heap)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import report, run_variants

    variants = ["bare", "stdlib_hooks", "forkguard_no_hooks", "forkguard_hooks"]
    ok = True
    for heap_mb in sorted({0, args.heap_mb}):
        label = "bare interpreter" if heap_mb == 0 else f"process with a ~{heap_mb} MB heap"
        print(f"fork + _exit + waitpid round trip, {label}, {HOOKS}x3 no-op hooks, "
              f"{args.forks} forks x {args.rounds} interleaved rounds (median of per-round medians)")
        samples = run_variants(Path(__file__), variants, args.rounds,
                               ["--forks", str(args.forks), "--heap", str(heap_mb)])
        ok = report(samples, "us", [
            ("forkguard_hooks", "stdlib_hooks", 1.15),
            ("forkguard_no_hooks", "bare", None),
            ("stdlib_hooks", "bare", None),
        ]) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
