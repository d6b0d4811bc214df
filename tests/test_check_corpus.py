"""`forkguard check leaks` on a corpus: no false alarm on bounded caches and churn, small and rare leaks found.

The clean corpus runs three times each, the leak corpus once each, two at a
time (the machine has two cores; RSS and the heap do not care about CPU).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import compile_shared

from forkguard.check import leaks, stats
from forkguard.check.leaks import LeakReport

CORPUS_C = r"""
#include <stdlib.h>
#include <string.h>
char *volatile last;   /* the allocations really happen (-O1 would drop an unused malloc) */
void malloc16(void) { char *p = malloc(16); memset(p, 1, 16); last = p; }
void every100_4k(void) { static int n; if (++n % 100 == 0) { char *p = malloc(4096); memset(p, 1, 4096); last = p; } }
"""

CORPUS = '''
import ctypes, decimal, functools, hashlib, itertools, json, logging, os, re, sqlite3
lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(__file__)), "libcorpus.so"))
_n = itertools.count(1000)

# clean: bounded caches, churn, cleared state
def json_dumps(): return json.dumps({"a": next(_n), "b": [1, 2, 3], "c": "x" * 10})
def re_fresh(): return re.compile(f"a{next(_n)}b+c")          # a fresh pattern each call: re's cache is bounded
@functools.lru_cache(maxsize=128)
def _lru128(key): return [key] * 4
def lru128(): return _lru128(next(_n))
_cleared = {}
def dict_cleared():                                          # a sawtooth: grows for 1000 calls, then cleared
    n = next(_n)
    _cleared[n] = [n] * 4
    if len(_cleared) >= 1000:
        _cleared.clear()
def hashlib_sha(): return hashlib.sha256(b"x" * 100 + str(next(_n)).encode()).hexdigest()
def sqlite_mem():
    con = sqlite3.connect(":memory:")
    con.execute("create table t(x)")
    con.execute("insert into t values (?)", (next(_n),))
    rows = con.execute("select x from t").fetchall()
    con.close()
    return rows
def decimal_math(): return decimal.Decimal(next(_n)) / decimal.Decimal(7) + decimal.Decimal("1.1")
_log = logging.getLogger("corpus.clean")
_log.setLevel(logging.INFO)
_log.propagate = False
_log.addHandler(logging.StreamHandler(open(os.devnull, "w")))
def logging_call(): _log.info("call %d", next(_n))

# leaks
_SENTINEL = object()
def c_refcount(): ctypes.pythonapi.Py_IncRef(ctypes.py_object(_SENTINEL))   # a reference, no memory
def leaked_tuple():
    n = next(_n)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object((n, n + 1)))                 # a tuple and two ints, never freed
def malloc16(): lib.malloc16()
def every100_4k(): lib.every100_4k()
@functools.lru_cache(maxsize=None)
def _unbounded(key): return key * 2
def lru_none(): return _unbounded(next(_n))
_leaky_log = logging.getLogger("corpus.leaky")
def handler_per_call(): _leaky_log.addHandler(logging.NullHandler())
_kept = []
def append_every_100():
    n = next(_n)
    if n % 100 == 0:
        _kept.append([n])
'''

CLEAN = ["json_dumps", "re_fresh", "lru128", "dict_cleared", "hashlib_sha", "sqlite_mem", "decimal_math",
         "logging_call"]
# target: (the metric that must find it, the growth per call it must be measured at, within 10%)
LEAKS = {
    "leaked_tuple": ("traced_bytes", 116.0),     # tuple (56) + two ints (2 x 28, rounded to 32 by tracemalloc's count)
    "malloc16": ("rss_bytes", 32.0),             # a 16 B malloc is a 32 B chunk
    "every100_4k": ("rss_bytes", 41.1),          # (4096 + 16) / 100
    "lru_none": ("traced_bytes", 60.0),          # key and value ints and the dict's entry, tables amortised
    "handler_per_call": ("objects", 3.0),        # the handler, its lock and its filters list
    "append_every_100": ("objects", 0.01),       # one list every 100 calls
}
BUDGET = 6.0  # a cap: a verdict ends a run sooner. Leaks get more room, so a loaded machine cannot hide one.
LEAK_BUDGET = 10.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("corpus")
    compile_shared(CORPUS_C, work, "corpus")
    (work / "corpus.py").write_text(CORPUS)
    return work / "corpus.py"


def run_all(corpus: Path, names: list[str], budget: float) -> list[tuple[str, LeakReport]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = pool.map(lambda name: leaks(f"{corpus}:{name}", budget=budget), names)
        return list(zip(names, reports, strict=True))


def test_clean_corpus_three_runs_each_no_false_positive(corpus: Path) -> None:
    results = run_all(corpus, CLEAN * 3, BUDGET)
    verdicts = {name: [r.verdict for n, r in results if n == name] for name in CLEAN}
    assert not any("leak" in v for v in verdicts.values()), verdicts      # zero false positives
    # and a verdict, nearly always: "clean: < N per call with 95% confidence" (else "inconclusive", never "leak")
    assert all(v.count("clean") >= 2 and set(v) <= {"clean", "inconclusive"} for v in verdicts.values()), verdicts
    for name, report in results:
        for trend in report.trends:
            assert trend.verdict != "clean" or trend.high < stats.FLOORS[trend.metric], (name, trend)
        assert report.seconds < 3 * BUDGET, (name, report.seconds)


def test_leak_corpus_found_with_its_growth_per_call(corpus: Path) -> None:
    for name, report in run_all(corpus, [*LEAKS, "c_refcount"], LEAK_BUDGET):
        if name == "c_refcount":
            if hasattr(sys, "gettotalrefcount"):   # a debug build counts references: the leak is found
                assert report.verdict == "leak" and report.trends[1].per_call == pytest.approx(1.0, rel=0.01)
            else:                                  # a release build cannot see it, and says so
                assert report.verdict != "leak" and "debug build" in report.refcount_note
            continue
        metric, expected = LEAKS[name]
        trend = next(t for t in report.trends if t.metric == metric)
        assert report.verdict == "leak" and trend.verdict == "leak", (name, report.trends)
        assert trend.per_call == pytest.approx(expected, rel=0.1), (name, trend)
        assert trend.low <= trend.per_call <= trend.high
