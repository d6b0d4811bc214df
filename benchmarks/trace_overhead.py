"""Tracing cost: one syscall-heavy forking workload untraced, under forkguard trace --follow-forks
(BPF and ptrace backends), under strace -f -c, and under bpftrace when it is installed; plus attach time.

Claims: forkguard (BPF) <= 1.2x untraced; at least 10x faster than strace -f -c; attach (start to the first
counted syscall) under 1 s; the ptrace backend within 2x of strace -f -c's time. The workload times its
own work (fork, then open/read/fstat/close/stat loops in three processes), so the tracer's start-up is
reported apart, as attach time.

    python benchmarks/trace_overhead.py [--rounds 5]      (as root; apt-get install strace for that row)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _harness import ROOT, make_parser

WORKLOAD = '''
import os, sys, time
path = sys.argv[1]
def work():
    for _ in range(20000):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 16384)
        os.fstat(fd)
        os.close(fd)
        os.stat(path)
start = time.perf_counter()
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        work()
        os._exit(0)
    pids.append(pid)
work()
for pid in pids:
    os.waitpid(pid, 0)
print(f"{time.perf_counter() - start:.6f}", file=sys.stderr)
'''


def run(prefix: list[str], script: str, data: str) -> tuple[float, float]:
    """(the workload's own seconds, the whole command's wall seconds) under ``prefix``."""
    start = time.perf_counter()
    proc = subprocess.run([*prefix, sys.executable, "-S", script, data], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    wall = time.perf_counter() - start
    return float(proc.stderr.strip().splitlines()[-1]), wall


ATTACH = '''
import subprocess, sys, time
busy = subprocess.Popen([sys.executable, "-S", "-c", "import os\\nwhile True: os.getppid()"])
time.sleep(0.2)
start = time.perf_counter()
from forkguard.trace import Tracer          # a fresh interpreter: the BTF parse is part of the cost
with Tracer(busy.pid) as tracer:
    while tracer.snapshot().count_of("getppid") == 0:
        time.sleep(0.001)
    print(time.perf_counter() - start)
busy.kill()
'''


def attach_seconds() -> float:
    """From importing the tracer to the first counted syscall of a process busy making syscalls."""
    out = subprocess.run([sys.executable, "-c", ATTACH], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip())


def main() -> int:
    args = make_parser(__doc__, rounds=5).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script, data = os.path.join(tmp, "workload.py"), os.path.join(tmp, "data")
        with open(script, "w") as f:
            f.write(WORKLOAD)
        with open(data, "wb") as f:
            f.write(os.urandom(16384))
        fg = [sys.executable, "-m", "forkguard", "trace", "--follow-forks", "--format", "json", "--backend"]
        tracers = {"untraced": [], "forkguard": [*fg, "bpf", "--"], "forkguard ptrace": [*fg, "ptrace", "--"]}
        if shutil.which("strace"):
            tracers["strace -f -c"] = ["strace", "-f", "-c", "-o", os.devnull]
        else:
            print("  strace is not installed (apt-get install strace): its row is left out")
        if shutil.which("bpftrace"):
            program = "tracepoint:raw_syscalls:sys_exit { @[args->id] = count(); }"
            tracers["bpftrace"] = ["bpftrace", "-q", "-e", program, "-c"]
        else:
            print("  bpftrace is not installed: its row is left out")
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in tracers}
        for _ in range(args.rounds):
            for name, prefix in tracers.items():
                if name == "bpftrace":
                    prefix = [*prefix, f"{sys.executable} -S {script} {data}"]
                    start = time.perf_counter()
                    subprocess.run(prefix, capture_output=True, check=True)
                    samples[name].append((time.perf_counter() - start, time.perf_counter() - start))
                    continue
                samples[name].append(run(prefix, script, data))
        attach = statistics.median(attach_seconds() for _ in range(args.rounds))

    base = statistics.median(s[0] for s in samples["untraced"])
    print(f"syscall-heavy forking workload (3 processes x 20000 x open/read/fstat/close/stat), "
          f"{args.rounds} interleaved rounds, medians")
    print(f"  {'':<18}{'workload s':>12}{'x untraced':>12}{'command s':>12}")
    for name, runs in samples.items():
        work, wall = statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs)
        print(f"  {name:<18}{work:>12.3f}{work / base:>11.2f}x{wall:>12.3f}")
    fg = statistics.median(s[0] for s in samples["forkguard"])
    ok = fg / base <= 1.2 and attach < 1.0
    print(f"  ratio forkguard / untraced: {fg / base:.3f}x  target <= 1.2x: {'met' if fg / base <= 1.2 else 'MISSED'}")
    if "strace -f -c" in samples:
        st = statistics.median(s[0] for s in samples["strace -f -c"])
        ok = ok and st / fg >= 10
        verdict = "met" if st / fg >= 10 else "MISSED"
        print(f"  strace -f -c / forkguard: {st / fg:.1f}x faster  target >= 10x: {verdict}")
        pt = statistics.median(s[0] for s in samples["forkguard ptrace"])
        ok = ok and pt / st <= 2
        print(f"  forkguard ptrace / strace -f -c: {pt / st:.2f}x  target <= 2x: {'met' if pt / st <= 2 else 'MISSED'}")
    print(f"  attach time (start to first counted syscall): {attach:.3f} s  target < 1 s: "
          f"{'met' if attach < 1 else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
