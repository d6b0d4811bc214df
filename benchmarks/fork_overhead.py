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
import os
import sys
from pathlib import Path

from _harness import emit, fork_round_trip_us, import_forkguard, make_parser, report, run_variants

HOOKS = 100


def noop_hooks(n: int) -> list:
    return [(lambda: None) for _ in range(n)]


def worker(variant: str, forks: int, heap_mb: int) -> None:
    # A service's heap: many small objects, as a web app's modules and caches make.
    heap = [{"key": str(i), "value": [i, i + 1]} for i in range(heap_mb * 1024 * 1024 // 400)]
    if variant == "stdlib_hooks":
        for before, parent, child in zip(noop_hooks(HOOKS), noop_hooks(HOOKS), noop_hooks(HOOKS), strict=True):
            os.register_at_fork(before=before, after_in_parent=parent, after_in_child=child)
    elif variant in ("forkguard_hooks", "forkguard_no_hooks"):
        forkguard = import_forkguard()
        if variant == "forkguard_hooks":
            for before, parent, child in zip(noop_hooks(HOOKS), noop_hooks(HOOKS), noop_hooks(HOOKS), strict=True):
                forkguard.register(before=before, after_in_parent=parent, after_in_child=child)
    emit(fork_round_trip_us(forks))
    del heap  # alive until the forks are done: it is what each fork copies


def main() -> int:
    parser = make_parser(__doc__, rounds=15)
    parser.add_argument("--heap", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--heap-mb", type=int, default=150, help="heap of the service-sized run (0: skip it)")
    args = parser.parse_args()
    if args.variant:
        worker(args.variant, args.forks, args.heap)
        return 0
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
