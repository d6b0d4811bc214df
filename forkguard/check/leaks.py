"""Leak rounds: call a target in rounds that grow until the growth per call is known, and judge it statistically.

The worker calls TARGET in rounds; after each it collects garbage and records
RSS, live objects (``sys.gettotalrefcount()`` on a debug build, else the
objects the gc tracks) and, in a second phase with tracemalloc on, the Python
heap. RSS and objects are measured with tracemalloc *off*: its bookkeeping for
every traced block would inflate RSS growth several times. Round sizes vary
at random around a size that doubles every few rounds until each metric's
verdict is decided (see ``stats.py``) or the time budget is spent. Warm-up
rounds (the first tenth of the budget, and the first heap rounds, while
tracing replaces what was allocated untraced) are left out of the fits.
"""

from __future__ import annotations

import gc
import math
import os
import random
import sys
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from . import stats
from .options import seconds
from .target import Target, parse_target, resolve

ROUNDS_PER_STEP = 8  # rounds between doublings of the round size
WARMUP_SHARE, RSS_SHARE = 0.1, 0.5  # of the budget: warm-up, then RSS and objects; the Python heap gets the rest
MAX_ROUNDS = 2000  # per phase, a bound on the worker's bookkeeping
MAX_GROWTH = 1 << 30  # stop measuring once RSS grew by this much (or a quarter of the available memory)
ROUNDS_IN_CAP = 64  # a round may grow RSS by at most this share of that cap: a fast big leak still gets its rounds
METRICS = ("rss_bytes", "objects", "traced_bytes")
NAMES = {"rss_bytes": "RSS", "traced_bytes": "Python heap", "objects": "objects"}
REFCOUNT_NOTE = ("a release build counts objects with gc.get_objects(): a C refcount leak on a long-lived object "
                 "shows only on a debug build (sys.gettotalrefcount)")


@dataclass
class Round:
    """One round: its calls and what the process held after it (traced_bytes only while tracemalloc ran)."""

    index: int
    phase: str  # "warmup", "rss" (tracemalloc off), "heap-warmup" or "heap" (tracemalloc on)
    calls: int
    total_calls: int
    seconds: float
    rss_bytes: int
    max_rss_bytes: int
    objects: int
    traced_bytes: int | None = None


@dataclass
class Trend:
    """One metric's verdict: growth per call with its 95% interval, and the growth in each third of the rounds."""

    metric: str
    verdict: str  # "leak", "clean" or "undecided"
    per_call: float | None
    low: float | None
    high: float | None
    floor: float | None  # the growth per call this verdict was measured against (None before any span)
    rounds: int
    calls: int
    segments: list[float | None] = field(default_factory=list)

    @property
    def leaking(self) -> bool:
        return self.verdict == "leak"


@dataclass
class LeakReport:
    """Every round, the verdict per metric, and how the run ended (finished, crashed or hung)."""

    target: str
    budget: float
    seconds: float
    rounds: list[Round]
    trends: list[Trend]
    verdict: str  # "leak", "clean", "inconclusive", "crashed" or "hung"
    objects_source: str
    refcount_note: str
    grown_types: dict[str, int] = field(default_factory=dict)
    growth_sites: list[str] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)
    crash: dict[str, Any] | None = None
    hang: dict[str, Any] | None = None

    @property
    def leaking(self) -> bool:
        return self.verdict == "leak"

    @property
    def found(self) -> bool:
        """Something to act on: a leak, a crash or a hang (the exit status 1 of the CLI)."""
        return self.verdict in ("leak", "crashed", "hung")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calls"] = self.rounds[-1].total_calls if self.rounds else 0
        data["leaking"] = self.leaking
        return data


def judge(rounds: list[Round]) -> list[Trend]:
    """The trend of each metric over its measured rounds: RSS and objects in the rss phase, the heap in the heap one."""
    trends = []
    for metric in METRICS:
        phase = "heap" if metric == "traced_bytes" else "rss"
        measured = [r for r in rounds if r.phase == phase]
        xs = [float(r.total_calls) for r in measured]
        ys = [float(getattr(r, metric)) for r in measured]
        result = stats.judge(xs, ys, metric)
        fit = result.fit
        trends.append(Trend(metric, result.verdict, fit and fit.slope, fit and fit.low, fit and fit.high,
                            result.floor if math.isfinite(result.floor) else None, len(measured),
                            int(xs[-1] - xs[0]) if xs else 0, [s and s.slope for s in result.segments]))
    return trends


def overall(trends: list[Trend]) -> str:
    if any(t.verdict == "leak" for t in trends):
        return "leak"
    return "clean" if all(t.verdict == "clean" for t in trends) else "inconclusive"


def leaks(target: str, budget: float = 30.0, timeout: float = 60.0, progress=None) -> LeakReport:  # type: ignore[no-untyped-def]
    """Leak rounds on ``target`` in a fresh interpreter, for about ``budget`` seconds.

    ``timeout``: seconds a round may take before the target counts as hung. ``progress(elapsed, budget, rounds)``
    is called as rounds arrive. CheckError (or TargetError) when the check cannot run.
    """
    from . import CheckError, worker

    parsed = parse_target(target)
    budget = seconds(budget, "budget")
    timeout = seconds(timeout, "timeout")
    start = time.monotonic()
    rounds: list[Round] = []
    final: dict[str, Any] = {}
    if progress:
        progress(0.0, budget, 0)
    run = worker.start("leaks", parsed, {"budget": budget})
    try:
        deadline = time.monotonic() + timeout
        while run.exit_code is None and time.monotonic() < deadline:
            for kind, message in run.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                if kind != "report":
                    continue
                deadline = time.monotonic() + timeout  # any news is progress
                if "error" in message:
                    raise CheckError(message["error"])
                if "round" in message:
                    rounds.append(Round(**message["round"]))
                    if progress:
                        progress(time.monotonic() - start, budget, len(rounds))
                if "done" in message:
                    final = message["done"]
        for kind, message in run.drain():
            if kind == "report" and "error" in message:
                raise CheckError(message["error"])
            if kind == "report" and "round" in message:
                rounds.append(Round(**message["round"]))
            if kind == "report" and "done" in message:
                final = message["done"]
        crash = hang = None
        after = {"after_rounds": len(rounds), "after_calls": rounds[-1].total_calls if rounds else 0}
        if run.exit_code is None:
            hang = {**worker.hung(run, timeout), **after}
        elif run.exit_code < 0:
            crash = {**worker.crashed(run), **after}
        elif not final:
            raise CheckError(f"the worker running {target} ended with status {run.exit_code} before reporting: "
                             f"{run.stderr.text().strip()[-300:]}")
    finally:
        run.close()
    trends = judge(rounds)
    verdict = "hung" if hang else "crashed" if crash else overall(trends)
    return LeakReport(target, budget, time.monotonic() - start, rounds, trends, verdict,
                      final.get("objects_source", "gc.get_objects"),
                      "" if final.get("objects_source") == "sys.gettotalrefcount" else REFCOUNT_NOTE,
                      final.get("grown_types", {}), final.get("growth_sites", []),
                      {"stdout": run.stdout.summary(), "stderr": run.stderr.summary()}, crash, hang)


# --- the worker


def _memory() -> tuple[int, int]:
    """RSS and peak RSS from one read of /proc/self/status (VmHWM >= VmRSS within one read).

    Read with os.read, not open(): a text file object leaves a few blocks behind in io's caches each time, which
    the heap rounds would count as growth.
    """
    fd = os.open("/proc/self/status", os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    rss = int(data.split(b"VmRSS:", 1)[1].split(None, 1)[0]) * 1024
    peak = int(data.split(b"VmHWM:", 1)[1].split(None, 1)[0]) * 1024
    return rss, max(peak, rss)


def _objects() -> tuple[int, str]:
    """Live references on a debug build, else the objects the gc tracks (those gc.freeze set aside included)."""
    if hasattr(sys, "gettotalrefcount"):
        return sys.gettotalrefcount(), "sys.gettotalrefcount"
    return len(gc.get_objects()) + gc.get_freeze_count(), "gc.get_objects"


def _growth_cap() -> int:
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return MAX_GROWTH
    return min(MAX_GROWTH, available // 4)


class _Rounds:
    """The worker's round loop: runs, measures and reports rounds, sized by time (tracemalloc slows calls down)."""

    def __init__(self, fn, channel, budget: float) -> None:  # type: ignore[no-untyped-def]
        self.fn, self.channel, self.budget = fn, channel, budget
        self.start = time.monotonic()
        self.index = self.total = 0
        self.jitter = random.Random(0)  # round sizes vary so a cycle of the target never lines up with them
        self.cap = _growth_cap()
        self.rss0 = self.rss = _memory()[0]
        self.max_calls = 1 << 62  # lowered for a target whose RSS grows fast: rounds must fit many times in the cap
        self.per_call = self._time_calls()
        self.overhead = 0.0
        # Measurements kept for the stopping rule, in preallocated arrays: appending to lists during the heap
        # phase would itself grow the Python heap being measured.
        self.measured = {phase: (array("d", bytes(8 * 4 * MAX_ROUNDS)), [0]) for phase in ("rss", "heap")}

    def _time_calls(self) -> float:
        fn, calls, began = self.fn, 0, time.perf_counter()
        while calls < 1000 and time.perf_counter() - began < 0.05:
            fn()
            calls += 1
        return max((time.perf_counter() - began) / calls, 1e-8)

    def freeze(self) -> None:
        """Set every object alive now aside from the collector (gc.freeze).

        Each round ends with a full collection, which walks every tracked object: a target leaking a million of
        them would make it slower than the calls. Frozen objects are skipped (still counted, and freed when their
        last reference goes). Nothing joins the frozen set later, so one of its objects that becomes cyclic
        garbage (and is never collected) cannot make anything grow.
        """
        gc.collect()
        gc.freeze()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def stop(self, until: float) -> bool:
        """Time is up, or RSS grew so much that going on would only risk the machine."""
        return self.elapsed() >= until or _memory()[0] - self.rss0 > self.cap

    def run(self, phase: str, seconds: float) -> float:
        """One round in ``phase`` of about ``seconds`` of calls (±25% at random); its duration."""
        import tracemalloc

        # The measuring (a full collection, counting objects) takes its share of the round first: it grows with
        # what a leaking target keeps, and calls squeezed in beside it keep the rounds many and short.
        calls_time = max(seconds - self.overhead, seconds / 4)
        calls = max(1, min(self.max_calls, round(calls_time / self.per_call * self.jitter.uniform(0.75, 1.25))))
        fn = self.fn
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        took = time.perf_counter() - began
        gc.collect()
        self.per_call = max(took / calls, 1e-8)
        self.total += calls
        objects = _objects()[0]
        rss, peak = _memory()
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
        self.overhead = time.perf_counter() - began - took
        if rss - self.rss > self.cap / ROUNDS_IN_CAP:
            self.max_calls = max(1, int(self.cap / ROUNDS_IN_CAP / ((rss - self.rss) / calls)))
        self.rss = rss
        if phase in self.measured:
            values, used = self.measured[phase]
            if used[0] < MAX_ROUNDS:
                values[4 * used[0]:4 * used[0] + 4] = array("d", (self.total, rss, objects, traced or 0))
                used[0] += 1
        self.channel.send(round={"index": self.index, "phase": phase, "calls": calls, "total_calls": self.total,
                                 "seconds": round(took, 6), "rss_bytes": rss, "max_rss_bytes": peak,
                                 "objects": objects, "traced_bytes": traced})
        self.index += 1
        return took

    def column(self, phase: str, i: int) -> list[float]:
        values, used = self.measured[phase]
        return list(values[i:4 * used[0]:4])

    def verdict(self, phase: str, i: int, metric: str) -> str:
        return stats.judge(self.column(phase, 0), self.column(phase, i), metric).verdict

    def decided(self, phase: str) -> bool:
        """Every metric of ``phase`` has a verdict, or one leaks (the others cannot change the outcome)."""
        columns = {"rss": ((1, "rss_bytes"), (2, "objects")), "heap": ((3, "traced_bytes"),)}[phase]
        verdicts = [self.verdict(phase, i, metric) for i, metric in columns]
        return self.measured[phase][1][0] >= MAX_ROUNDS or "leak" in verdicts or "undecided" not in verdicts

    def phase(self, phase: str, until: float, warmup_rounds: int = 0) -> None:
        """Rounds of ``phase`` until its metrics are decided or ``until`` s; rounds twice as long at each step."""
        seconds = self.first_round()
        for _ in range(warmup_rounds):
            self.run(f"{phase}-warmup", seconds)
        while not self.stop(until):
            for _ in range(ROUNDS_PER_STEP):
                self.run(phase, seconds)
                if self.stop(until):
                    return
            if self.decided(phase):
                return
            seconds = min(2 * seconds, self.budget / 12)  # a round stays a small part of the budget

    def first_round(self) -> float:
        return max(0.02, self.budget / 150)


def worker(target: Target, options: dict[str, Any], channel) -> None:  # type: ignore[no-untyped-def]
    """The worker's body (``forkguard.check.worker``): warm-up, RSS and objects rounds, then Python heap rounds."""
    import tracemalloc

    budget = float(options["budget"])
    fn = resolve(target)
    fn()  # imports and first-call caches are not leaks
    loop = _Rounds(fn, channel, budget)
    # Warm-up: a tenth of the budget, cut short when RSS already grew by a quarter of what the rounds may use.
    while loop.index < 2 or (loop.elapsed() < budget * WARMUP_SHARE and loop.rss - loop.rss0 < loop.cap / 4):
        loop.run("warmup", loop.first_round())
    loop.freeze()
    types_before = Counter(type(o).__name__ for o in gc.get_objects())
    loop.phase("rss", budget * (WARMUP_SHARE + RSS_SHARE))
    grown = Counter(type(o).__name__ for o in gc.get_objects()) - types_before
    del types_before
    loop.freeze()
    tracemalloc.start(1)
    # The verdicts computed between heap rounds make floats: the float free list keeps up to 100 of them, traced
    # once tracing is on. Fill it now, so that bounded bookkeeping is not part of the heap the rounds measure.
    sum([0.5 * i for i in range(1000)])
    loop.phase("heap", budget, warmup_rounds=ROUNDS_PER_STEP)
    sites = _growth_sites(fn, loop.per_call) if loop.verdict("heap", 3, "traced_bytes") == "leak" else []
    tracemalloc.stop()
    gc.unfreeze()
    channel.send(done={"objects_source": _objects()[1], "grown_types": dict(grown.most_common(5)),
                       "growth_sites": sites})


def _growth_sites(fn, per_call: float) -> list[str]:  # type: ignore[no-untyped-def]
    """The three source lines whose Python allocations grew most per call, between two snapshots.

    Tracing restarts first, so the snapshots hold only these calls' blocks, not every block leaked so far.
    """
    import tracemalloc

    tracemalloc.stop()
    tracemalloc.start(1)
    calls = max(1, min(round(0.25 / per_call), 100_000))
    for _ in range(calls):
        fn()
    gc.collect()
    before = tracemalloc.take_snapshot()
    for _ in range(calls):
        fn()
    gc.collect()
    after = tracemalloc.take_snapshot()
    own = (__file__, tracemalloc.__file__)
    growth = [s for s in after.compare_to(before, "lineno") if s.size_diff > 0
              and s.traceback[0].filename not in own]
    return [f"{s.traceback[0].filename}:{s.traceback[0].lineno} +{s.size_diff / calls:.1f} B/call"
            for s in growth[:3]]

