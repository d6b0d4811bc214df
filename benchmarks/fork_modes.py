"""Fork round trip (fork + _exit + waitpid) under each fork mode, against a bare fork; and the kernel rule's cost.

Claims: ``allow`` and ``warn`` cost what forkguard's hooks cost; ``wait_for_exit_exec``
adds one pipe and one blocking read in the parent (the child exits at once
here, so the wait itself is short).

The kernel rule (``forkguard run --fork-mode deny``, a seccomp filter) runs on
every system call of the process: measured on what it lets through (a thread
start + join, a syscall-heavy loop of getppid() or stat()) against the same
without the filter, and on what it refuses (os.fork() failing in the kernel)
against Python-level deny and a bare fork round trip.

    python benchmarks/fork_modes.py [--rounds 11] [--forks 200]
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from _harness import ROOT, emit, fork_round_trip_us, import_forkguard, make_parser, report, run_variants

VARIANTS = ["bare", "allow", "warn", "wait_for_exit_exec"]
KERNEL_GROUPS = {
    "thread start + join (us)": ["thread bare", "thread kernel"],
    "denied fork (us)": ["fork round trip bare", "deny python", "deny kernel"],
    "os.getppid() (ns)": ["getppid bare", "getppid kernel"],
    "os.stat('/') (ns)": ["stat bare", "stat kernel"],
}


def install_kernel_rule() -> None:
    """The filter forkguard run installs, loaded without the forkguard package (no at-fork hooks)."""
    spec = importlib.util.spec_from_file_location("seccomp_rule", ROOT / "forkguard" / "_seccomp.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.install(deny_exec=False)


def median_us(fn, count: int, warmup: int = 20) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(count + warmup):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:]) * 1e6


def loop_ns(fn, count: int) -> float:  # type: ignore[no-untyped-def]
    """Best of 5 timings of ``count`` calls, per call."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e9


def thread_round_trip() -> None:
    thread = threading.Thread(target=int)
    thread.start()
    thread.join()


def refused_fork() -> None:
    try:
        os.fork()
    except OSError:
        return
    raise SystemExit("fork was not refused")


def kernel_worker(variant: str, forks: int) -> float:
    what, how = variant.rsplit(" ", 1)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if how == "kernel":
        install_kernel_rule()
    if how == "python":
        import_forkguard().set_fork_mode("deny")
    if what == "thread":
        return median_us(thread_round_trip, forks)
    if what == "fork round trip":
        return fork_round_trip_us(forks)
    if what == "deny":
        return median_us(refused_fork, forks)
    if what == "getppid":
        return loop_ns(os.getppid, 200_000)
    return loop_ns(lambda: os.stat("/"), 100_000)


def worker(variant: str, forks: int) -> None:
    import logging  # in every variant, bare included: warn logs through it, and importing it costs every fork

    logging.getLogger("forkguard").addHandler(logging.NullHandler())  # warn formats the stack, prints nothing
    logging.getLogger("forkguard").propagate = False
    if " " in variant:
        emit(kernel_worker(variant, forks))
        return
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
    extra = ["--forks", str(args.forks)]
    print(f"fork + _exit + waitpid round trip per fork mode, {args.forks} forks x {args.rounds} interleaved rounds")
    samples = run_variants(Path(__file__), VARIANTS, args.rounds, extra)
    report(samples, "us", [(variant, "bare", None) for variant in VARIANTS[1:]])
    print("\nthe kernel rule (seccomp filter of forkguard run --fork-mode deny) against none, "
          f"{args.rounds} interleaved rounds each")
    for title, variants in KERNEL_GROUPS.items():
        print(title)
        unit = title.rsplit("(", 1)[1].rstrip(")")
        samples = run_variants(Path(__file__), variants, args.rounds, extra)
        ratios = [(variant, variants[0], None) for variant in variants[1:]]
        if title.startswith("denied"):  # a refusal against the other refusal, and how much cheaper than a fork
            ratios = [("deny kernel", "deny python", None), ("fork round trip bare", "deny kernel", None)]
        report(samples, unit, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
