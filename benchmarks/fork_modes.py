"""Fork round trip (fork + _exit + waitpid) under each fork mode, against a bare fork.

Claim: ``allow`` and ``warn`` cost what forkguard's hooks cost; ``wait_for_exit_exec``
adds one pipe and one blocking read in the parent (the child exits at once
here, so the wait itself is short).

    python benchmarks/fork_modes.py [--rounds 11] [--forks 200]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _harness import emit, fork_round_trip_us, import_forkguard, make_parser, report, run_variants

VARIANTS = ["bare", "allow", "warn", "wait_for_exit_exec"]


def worker(variant: str, forks: int) -> None:
    import logging  # in every variant, bare included: warn logs through it, and importing it costs every fork

    logging.getLogger("forkguard").addHandler(logging.NullHandler())  # warn formats the stack, prints nothing
    logging.getLogger("forkguard").propagate = False
    if variant != "bare":
        import_forkguard().set_fork_mode(variant)
    emit(fork_round_trip_us(forks))


def main() -> int:
    parser = make_parser(__doc__, rounds=11)
    parser.add_argument("--forks", type=int, default=200)
    args = parser.parse_args()
    if args.variant:
        worker(args.variant, args.forks)
        return 0
    print(f"fork + _exit + waitpid round trip per fork mode, {args.forks} forks x {args.rounds} interleaved rounds")
    samples = run_variants(Path(__file__), VARIANTS, args.rounds, ["--forks", str(args.forks)])
    report(samples, "us", [(variant, "bare", None) for variant in VARIANTS[1:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
