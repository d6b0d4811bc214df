"""Fork round trip (fork + _exit + waitpid) under each fork mode, against a bare fork.

Claim: ``allow`` and ``warn`` cost what forkguard's hooks cost; ``wait_for_exit_exec``
adds one pipe and one blocking read in the parent (the child exits at once
here, so the wait itself is short).

    python benchmarks/fork_modes.py [--rounds 11] [--forks 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

VARIANTS = ["bare", "allow", "warn", "wait_for_exit_exec"]


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


def worker(variant: str, forks: int) -> None:
    import logging  # in every variant, bare included: warn logs through it, and importing it costs every fork

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # parent and child in sequence, on one CPU
    logging.getLogger("forkguard").addHandler(logging.NullHandler())  # warn formats the stack, prints nothing
    logging.getLogger("forkguard").propagate = False
    if variant != "bare":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import forkguard

        forkguard.set_fork_mode(variant)
    print(json.dumps({"value": measure(forks)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--forks", type=int, default=200)
    args = parser.parse_args()
    if args.variant:
        worker(args.variant, args.forks)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import report, run_variants

    print(f"fork + _exit + waitpid round trip per fork mode, {args.forks} forks x {args.rounds} interleaved rounds")
    samples = run_variants(Path(__file__), VARIANTS, args.rounds, ["--forks", str(args.forks)])
    report(samples, "us", [(variant, "bare", None) for variant in VARIANTS[1:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
