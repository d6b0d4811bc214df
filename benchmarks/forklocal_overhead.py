"""Cost of ForkLocal.get() against a plain attribute read, and of forkguard.Lock against threading.Lock.

Claim: reading a per-process value costs at most 5x reading an attribute (it
is re-checked against the process on every access, with no syscall).

    python benchmarks/forklocal_overhead.py [--rounds 15] [--number 500000]
"""

from __future__ import annotations

import sys
import timeit

from _harness import ROOT, emit, make_parser, report, run_variants

SETUP = f'''
import sys, threading
sys.path.insert(0, {str(ROOT)!r})
import forkguard
class Holder:
    pass
holder = Holder()
holder.value = object()
local = forkguard.ForkLocal(object)
local.get()
fg_lock, th_lock = forkguard.Lock(), threading.Lock()
'''

STATEMENTS = {
    "attribute_read": "holder.value",
    "forklocal_get": "local.get()",
    "threading_lock": "with th_lock: pass",
    "forkguard_lock": "with fg_lock: pass",
}


def worker(variant: str, number: int) -> None:
    timer = timeit.Timer(STATEMENTS[variant], setup=SETUP)
    emit(min(timer.repeat(repeat=3, number=number)) / number * 1e9)


def main() -> int:
    parser = make_parser(__doc__, rounds=15)
    parser.add_argument("--number", type=int, default=500_000)
    args = parser.parse_args()
    if args.variant:
        worker(args.variant, args.number)
        return 0
    print(f"one access, {args.number} per timing, {args.rounds} interleaved rounds (median of rounds)")
    samples = run_variants(__file__, list(STATEMENTS), args.rounds, ["--number", str(args.number)])
    ok = report(samples, "ns", [("forklocal_get", "attribute_read", 5.0), ("forkguard_lock", "threading_lock", None)])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
