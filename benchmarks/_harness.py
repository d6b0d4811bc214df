"""Shared benchmark driver: run variants in fresh interpreters, interleaved, and report medians.

Each variant runs in its own interpreter (at-fork hooks registered through the
stdlib can never be removed), and the rounds alternate between variants so
that a noisy neighbour slows all of them alike.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path


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
