"""Shared benchmark driver: run variants in fresh interpreters, interleaved, and report medians.

Each variant runs in its own interpreter (at-fork hooks registered through the
stdlib can never be removed), and the rounds alternate between variants so
that a noisy neighbour slows all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: --rounds, and the hidden --variant its workers get."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"interleaved rounds (default {rounds})")
    return parser


def import_forkguard():  # type: ignore[no-untyped-def]
    """forkguard from this checkout, whether or not it is installed."""
    sys.path.insert(0, str(ROOT))
    import forkguard

    return forkguard


def fork_round_trip_us(forks: int, warmup: int = 20) -> float:
    """Median fork + _exit + waitpid round trip in microseconds.

    Parent and child share one CPU, so the round trip runs in sequence instead
    of depending on which core the scheduler picks for the child.
    """
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    times = []
    for _ in range(forks + warmup):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:]) * 1e6


def emit(value: float) -> None:
    """A worker's answer to the driver."""
    print(json.dumps({"value": value}))


def run_variants(script: Path, variants: list[str], rounds: int, extra: list[str]) -> dict[str, list[float]]:
    """Run ``script --variant V`` for every variant, ``rounds`` times interleaved; collect its figures."""
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            out = subprocess.run([sys.executable, str(script), "--variant", variant, *extra],
                                 capture_output=True, text=True, check=True)
            samples[variant].append(json.loads(out.stdout)["value"])
    return samples


def report(samples: dict[str, list[float]], unit: str, ratios: list[tuple[str, str, float | None]]) -> bool:
    """Print the median per variant and the requested ratios; return True when every target is met."""
    medians = {v: statistics.median(s) for v, s in samples.items()}
    width = max(map(len, medians))
    for variant, median in medians.items():
        spread = f"(min {min(samples[variant]):.3f}, max {max(samples[variant]):.3f}, n={len(samples[variant])})"
        print(f"  {variant:<{width}}  median {median:10.3f} {unit}  {spread}")
    ok = True
    for num, den, target in ratios:
        ratio = medians[num] / medians[den]
        verdict = "" if target is None else f"  target <= {target:.2f}x: {'met' if ratio <= target else 'MISSED'}"
        ok = ok and (target is None or ratio <= target)
        print(f"  ratio {num} / {den}: {ratio:.3f}x{verdict}")
    return ok


def timeit_benchmark(doc: str, setup: str, statements: dict[str, str],
                     ratios: list[tuple[str, str, float | None]], number: int) -> int:
    """A micro-benchmark of one statement per variant: its worker and driver in one call."""
    parser = make_parser(doc, rounds=15)
    parser.add_argument("--number", type=int, default=number, help=f"executions per timing (default {number})")
    args = parser.parse_args()
    if args.variant:
        import timeit

        timer = timeit.Timer(statements[args.variant], setup=setup)
        emit(min(timer.repeat(repeat=3, number=args.number)) / args.number * 1e9)
        return 0
    print(f"one execution, {args.number} per timing, {args.rounds} interleaved rounds (median of rounds)")
    samples = run_variants(Path(sys.argv[0]), list(statements), args.rounds, ["--number", str(args.number)])
    return 0 if report(samples, "ns", ratios) else 1
