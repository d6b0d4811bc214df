"""The leak verdict: growth per call over all measured calls, with a 95% confidence interval.

A metric (RSS, Python heap, objects) is fitted by least squares against the
cumulative number of calls. Its floor is the larger of a growth per call
worth reporting and a bounded amount spread over the calls measured (an
allocator step, freelists and caches filling as tracing replaces them: a
slow target measured over few calls must grow by more than that). A metric
**leaks** when the interval lies above zero, the growth reaches the floor,
and every third of the measured rounds grows significantly on its own (a
cache that fills and stops, or one allocator step, fails this), both over
all the calls and over their first half: a trend must hold while the calls
double, so something that fills for a while is not called a leak the moment
it is seen. It
is **clean** when the upper bound of the interval is below the metric's own
floor ("clean: < 0.5 B/call with 95% confidence"), never the raised one: too
few calls to call something a leak do not show there is none. Anything else
is undecided: more calls narrow the interval and lower the raised floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# Growth per call below which a metric counts as clean: RSS moves in pages and allocator steps, the Python heap
# and the object count are exact but see bounded caches churn.
FLOORS = {"rss_bytes": 2.0, "traced_bytes": 0.25, "objects": 0.001}
# Growth in all that bounded noise can explain, however many calls it is spread over.
NOISE = {"rss_bytes": 1 << 20, "traced_bytes": 64 << 10, "objects": 256}
MIN_POINTS = 12  # rounds before a verdict: three segments of four or more
MIN_HALF_POINTS = 9  # rounds in the first half of the calls that must show the same growth
_Z975 = NormalDist().inv_cdf(0.975)
_T975_SMALL = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


@dataclass
class Fit:
    """A least-squares slope (growth per call) and its 95% confidence interval."""

    slope: float
    low: float
    high: float
    points: int


@dataclass
class Judgement:
    """One metric's verdict ("leak", "clean" or "undecided") and the fits it rests on."""

    verdict: str
    fit: Fit | None
    segments: list[Fit | None]
    floor: float


def t975(df: int) -> float:
    """Student's t quantile for a two-sided 95% interval (Cornish-Fisher expansion above four degrees of freedom)."""
    if df in _T975_SMALL:
        return _T975_SMALL[df]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def fit(xs: list[float], ys: list[float]) -> Fit | None:
    """Least squares of ``ys`` on ``xs``; None with fewer than three points or no spread in ``xs``."""
    n = len(xs)
    if n < 3:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    residual = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in zip(xs, ys, strict=True))
    half = t975(n - 2) * math.sqrt(residual / (n - 2) / sxx)
    return Fit(slope, slope - half, slope + half, n)


def segments(xs: list[float], ys: list[float], parts: int = 3) -> list[Fit | None]:
    """A fit per equal share of the rounds, each also holding the round before it (so no growth falls between)."""
    n = len(xs)
    result = []
    for k in range(parts):
        low, high = max(0, k * n // parts - 1), (k + 1) * n // parts
        result.append(fit(xs[low:high], ys[low:high]) if high - low >= 3 else None)
    return result


def _grows(xs: list[float], ys: list[float], floor: float, min_points: int) -> bool:
    overall = fit(xs, ys)
    return (len(xs) >= min_points and overall is not None and overall.low > 0 and overall.slope >= floor
            and all(p is not None and p.low > 0 for p in segments(xs, ys)))


def judge(xs: list[float], ys: list[float], metric: str) -> Judgement:
    """The verdict on one metric (a key of FLOORS) measured after ``xs`` cumulative calls."""
    span = xs[-1] - xs[0] if xs else 0.0
    floor = max(FLOORS[metric], NOISE[metric] / span) if span > 0 else math.inf
    overall = fit(xs, ys)
    if len(xs) < MIN_POINTS or overall is None:
        return Judgement("undecided", overall, [], floor)
    parts = segments(xs, ys)
    half = [i for i, x in enumerate(xs) if x <= xs[0] + span / 2]
    if _grows(xs, ys, floor, MIN_POINTS) and _grows([xs[i] for i in half], [ys[i] for i in half], floor,
                                                    MIN_HALF_POINTS):
        return Judgement("leak", overall, parts, floor)
    if overall.high < FLOORS[metric]:  # not the raised floor: too few calls to rule a leak out is not clean
        return Judgement("clean", overall, parts, floor)
    return Judgement("undecided", overall, parts, floor)
