"""Cost of one enter+exit of forkguard.active() and feature.context(), against a bare ContextVar set/reset.

Claim: marking live state costs at most 3x a ContextVar.set/reset pair (what
seed 000's agent paid per request), and takes no lock.

    python benchmarks/context_overhead.py [--rounds 15] [--number 200000]
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

from _harness import ROOT, emit, make_parser, report, run_variants

SETUP = '''
import contextvars, sys
sys.path.insert(0, {root!r})
import forkguard
var = contextvars.ContextVar("request")
feature = forkguard.Feature("native")
active = forkguard.active
'''

STATEMENTS = {
    "contextvar_set_reset": "token = var.set(1); var.reset(token)",
    "forkguard_active": "with active('request'): pass",
    "feature_context": "with feature.context(): pass",
}


def worker(variant: str, number: int) -> None:
    timer = timeit.Timer(STATEMENTS[variant], setup=SETUP.format(root=str(ROOT)))
    emit(min(timer.repeat(repeat=3, number=number)) / number * 1e9)


def main() -> int:
    parser = make_parser(__doc__, rounds=15)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    if args.variant:
        worker(args.variant, args.number)
        return 0
    print(f"one enter+exit, {args.number} per timing, {args.rounds} interleaved rounds (median of rounds)")
    samples = run_variants(Path(__file__), list(STATEMENTS), args.rounds, ["--number", str(args.number)])
    ok = report(samples, "ns", [
        ("forkguard_active", "contextvar_set_reset", 3.0),
        ("feature_context", "contextvar_set_reset", 3.0),
    ])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
