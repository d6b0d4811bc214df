"""Leak rounds: call a target many times per round and watch what grows, with a verdict that holds up to noise.

Each round calls TARGET ``calls_per_round`` times, collects garbage, and records
live references (``sys.gettotalrefcount()`` on a debug build, otherwise objects
tracked by the gc), the object types that grew, tracemalloc's top growth sites
(Python allocations) and RSS (native ones too). Warm-up rounds are left out.
A metric leaks when its least-squares slope over the rounds is significant
(t > 3), above a floor per call and per round, still there in the second half
of the rounds (a cache that fills up and stops is not a leak), and the metric
grew (by a quarter of that floor) in at least 70% of the steps between rounds:
RSS moves in allocator steps and plateaus, a leak grows every round.
"""

from __future__ import annotations

import gc
import json
import math
import resource
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import pairwise

from .target import resolve, worker_env, worker_error

PAGE = resource.getpagesize()
# Growth below which a slope is noise, per call and per round: RSS moves in pages and the allocator maps arenas
# in steps (a 128 KiB jump now and then, a few KiB of creep from the measuring itself).
FLOOR_PER_CALL = {"rss_bytes": 8.0, "traced_bytes": 8.0, "objects": 0.05}
FLOOR_PER_ROUND = {"rss_bytes": 32 * 1024.0, "traced_bytes": 4096.0, "objects": 16.0}
T_THRESHOLD = 3.0
# A leak grows in (nearly) every round; allocator noise moves in a few steps and plateaus.
RISING_SHARE = 0.7


@dataclass
class Round:
    """What one round left behind."""

    index: int
    warmup: bool
    seconds: float
    objects: int
    traced_bytes: int
    rss_bytes: int
    max_rss_bytes: int
    grown_types: dict[str, int] = field(default_factory=dict)
    growth_sites: list[str] = field(default_factory=list)


@dataclass
class Trend:
    """A metric's growth over the measured rounds."""

    metric: str
    per_round: float
    per_call: float
    t_statistic: float
    second_half_per_round: float
    rising_share: float  # share of round-to-round steps that grew by more than a quarter of the floor
    leaking: bool


@dataclass
class LeakReport:
    """Every round (warm-up included) and the verdict on the measured ones."""

    target: str
    rounds: list[Round]
    calls_per_round: int
    trends: list[Trend]
    leaking: bool
    total_refs_source: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _objects() -> tuple[int, str]:
    if hasattr(sys, "gettotalrefcount"):
        return sys.gettotalrefcount(), "sys.gettotalrefcount"
    return len(gc.get_objects()), "gc.get_objects"


def run_rounds(target: str, rounds: int, warmup: int, calls_per_round: int):  # type: ignore[no-untyped-def]
    """Call the target and yield a Round after each round (in this process; leaks() uses a fresh one)."""

    fn = resolve(target)
    tracemalloc.start(1)  # one frame: the growth sites need no more, and each traced block costs less RSS
    previous_types: Counter[str] = Counter(type(o).__name__ for o in gc.get_objects())
    previous_sites = _site_sizes()
    for index in range(warmup + rounds):
        start = time.perf_counter()
        for _ in range(calls_per_round):
            fn()
        gc.collect()
        seconds = time.perf_counter() - start
        # Counted first: the measuring below allocates (and frees) objects and memory of its own.
        objects, rss, traced = _objects()[0], _rss(), tracemalloc.get_traced_memory()[0]
        types = Counter(type(o).__name__ for o in gc.get_objects())
        grown = {name: n for name, n in (types - previous_types).most_common(5)}
        sites = _site_sizes()
        growth = sorted(((size - previous_sites.get(where, 0), where) for where, size in sites.items()), reverse=True)
        yield Round(index, index < warmup, seconds, objects, traced, rss,
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, grown,
                    [f"{where} +{diff} B" for diff, where in growth[:3] if diff > 0])
        previous_types, previous_sites = types, sites
    tracemalloc.stop()


def _site_sizes() -> dict[str, int]:
    """Bytes tracemalloc sees allocated per source line, this module's own lines left out."""
    own = (__file__, tracemalloc.__file__)  # filtered here: Snapshot.filter_traces is slow on big heaps
    return {f"{frame.filename}:{frame.lineno}": stat.size
            for stat in tracemalloc.take_snapshot().statistics("lineno")
            if (frame := stat.traceback[0]).filename not in own}


def slope(values: list[float]) -> tuple[float, float]:
    """Least-squares slope per step and its t-statistic (1e9 for a perfect nonzero line, so JSON stays finite)."""
    n = len(values)
    if n < 3:
        return 0.0, 0.0
    xs = range(n)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True)) / sxx
    residual = sum((y - (mean_y + b * (x - mean_x))) ** 2 for x, y in zip(xs, values, strict=True))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    if stderr == 0:
        return b, math.copysign(1e9, b) if b else 0.0
    return b, b / stderr


def verdict(rounds: list[Round], calls_per_round: int) -> list[Trend]:
    """A trend per metric over the measured (non-warm-up) rounds."""
    measured = [r for r in rounds if not r.warmup]
    trends = []
    for metric in ("rss_bytes", "traced_bytes", "objects"):
        values = [float(getattr(r, metric)) for r in measured]
        per_round, t = slope(values)
        second, _ = slope(values[len(values) // 2:]) if len(values) >= 6 else (per_round, t)
        per_call = per_round / calls_per_round
        steps = [b - a for a, b in pairwise(values)]
        rising = sum(step > FLOOR_PER_ROUND[metric] / 4 for step in steps) / len(steps) if steps else 0.0
        leaking = (t > T_THRESHOLD and per_call > FLOOR_PER_CALL[metric] and per_round > FLOOR_PER_ROUND[metric]
                   and second > 0.5 * per_round  # still growing at the end: not a cache filling up
                   and rising >= RISING_SHARE)
        trends.append(Trend(metric, per_round, per_call, t, second, rising, leaking))
    return trends


def worker_main(argv: list[str]) -> int:
    """The worker's body: rounds as JSON lines on stdout (run by ``forkguard.check._leak_worker``)."""
    target, rounds, warmup, calls = argv[0], int(argv[1]), int(argv[2]), int(argv[3])

    try:
        for r in run_rounds(target, rounds, warmup, calls):
            print(json.dumps(asdict(r)), flush=True)
    except Exception as exc:
        return worker_error(target, exc)
    print(json.dumps({"source": _objects()[1]}), flush=True)
    return 0


def leaks(target: str, rounds: int = 10, warmup: int = 2, calls_per_round: int = 1000,
          progress=None) -> LeakReport:  # type: ignore[no-untyped-def]
    """Run leak rounds on ``target`` in a fresh interpreter and judge them; CheckError on bad input."""
    import subprocess

    from . import CheckError

    for name, value, low in (("rounds", rounds, 3), ("warmup", warmup, 0), ("calls_per_round", calls_per_round, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CheckError(f"{name} must be an int >= {low}, not {value!r}")
    worker = subprocess.Popen([sys.executable, "-m", "forkguard.check._leak_worker", target, str(rounds), str(warmup),
                               str(calls_per_round)], stdout=subprocess.PIPE, text=True,
                              env=worker_env())
    measured: list[Round] = []
    source = "gc.get_objects"
    for line in worker.stdout:  # type: ignore[union-attr]
        data = json.loads(line)
        if "error" in data:
            worker.wait()
            raise CheckError(data["error"])
        if "source" in data:
            source = data["source"]
            continue
        measured.append(Round(**data))
        if progress:
            progress(len(measured), rounds + warmup)
    if worker.wait() != 0 or len(measured) != rounds + warmup:
        raise CheckError(f"the worker running {target} ended early (exit status {worker.returncode})")
    trends = verdict(measured, calls_per_round)
    return LeakReport(target, measured, calls_per_round, trends, any(t.leaking for t in trends), source)

