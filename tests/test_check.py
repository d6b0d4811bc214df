"""forkguard check: real leaks, crashes, hangs and fork deadlocks in a C library compiled here, and Python targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, compile_shared, require_tool

NATIVE = r"""
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t owner;
char *volatile last;   /* keeps -O1 from eliding the allocations */
void leak_kb(void) { char *p = malloc(1024); memset(p, 1, 1024); last = p; }
void clean_call(void) { char *p = malloc(1024); memset(p, 1, 1024); last = p; free(p); }
void crash_here(void) { volatile int *p = 0; *p = 42; }
void locked_work(void) { pthread_mutex_lock(&lock); usleep(20000); pthread_mutex_unlock(&lock); }
void hold_lock(void) { pthread_mutex_lock(&lock); }
void init_owner(void) { owner = getpid(); }
void owner_only(void) { if (getpid() != owner) abort(); }
"""

TARGETS = """
import ctypes, os, forkguard
lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(__file__)), "libnative.so"))
lib.init_owner()
native = forkguard.Feature("native")
_leaked = []
_cache = {}
_calls = [0]

def c_leak(): lib.leak_kb()
def c_clean(): lib.clean_call()
def segfault(): lib.crash_here()
def unsafe(): lib.locked_work()
def guarded():
    if native.enabled:
        with native.context():
            lib.locked_work()
def owner_only(): lib.owner_only()
def py_leak(): _leaked.append([_calls[0]] * 32)
def py_clean(): sorted([3, 1, 2] * 8)
def bounded_cache():
    _calls[0] += 1
    if len(_cache) < 3000:
        _cache[_calls[0]] = [_calls[0]] * 32
def raises(): raise RuntimeError("boom from the target")
not_callable = 42
"""


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("check")
    compile_shared(NATIVE, work, "native")
    (work / "targets.py").write_text(TARGETS)
    (work / "crash_script.py").write_text("import targets\ndef run_it():\n    targets.segfault()\nrun_it()\n")
    (work / "deadlock_script.py").write_text(textwrap.dedent("""
        import os, threading, targets
        threading.Thread(target=targets.lib.hold_lock).start()   # a thread takes the lock and returns
        import time; time.sleep(0.1)
        pid = os.fork()
        if pid == 0:
            targets.lib.hold_lock()      # the lock was copied held: the child waits forever
            os._exit(0)
        os.waitpid(pid, 0)
        """))
    (work / "vg_leak.py").write_text("import targets\nfor _ in range(5): targets.c_leak()\n")
    (work / "vg_clean.py").write_text("import targets\nfor _ in range(5): targets.c_clean()\n")
    return work


def forkguard_check(work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{work}"}
    return subprocess.run([sys.executable, "-m", "forkguard", "check", *args], capture_output=True, text=True,
                          cwd=work, env=env, timeout=timeout)


def check_json(work: Path, *args: str, expect: int) -> dict:
    proc = forkguard_check(work, *args, "--json") if "--" not in args else forkguard_check(
        work, *args[:args.index("--")], "--json", *args[args.index("--"):])
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a killed orphan waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def trend(report: dict, metric: str) -> dict:
    return next(t for t in report["trends"] if t["metric"] == metric)


# --- leaks


def test_c_leak_found_with_its_size_per_call(targets: Path) -> None:
    report = check_json(targets, "leaks", "targets.py:c_leak", expect=1)
    rss = trend(report, "rss_bytes")
    assert rss["leaking"] and 900 <= rss["per_call"] <= 1300, rss   # 1024 B malloc'd per call (+ malloc header)
    assert not trend(report, "objects")["leaking"] and not trend(report, "traced_bytes")["leaking"]
    assert len(report["rounds"]) == 12 and sum(r["warmup"] for r in report["rounds"]) == 2


def test_python_leak_found_with_its_objects_per_call(targets: Path) -> None:
    report = check_json(targets, "leaks", "targets:py_leak", "--rounds", "8", expect=1)
    objects, traced = trend(report, "objects"), trend(report, "traced_bytes")
    assert objects["leaking"] and 0.95 <= objects["per_call"] <= 1.05, objects   # one list per call
    assert traced["leaking"] and 300 <= traced["per_call"] <= 420, traced        # list of 32 pointers + header
    last = report["rounds"][-1]
    assert last["grown_types"].get("list", 0) >= 900
    assert any("targets.py" in site for site in last["growth_sites"])


@pytest.mark.parametrize("target", ["targets.py:c_clean", "targets:bounded_cache", "targets:py_clean"])
def test_no_false_positive_over_several_runs(targets: Path, target: str) -> None:
    for _ in range(3):
        report = check_json(targets, "leaks", target, expect=0)
        assert not report["leaking"], [t for t in report["trends"] if t["leaking"]]


def test_bounded_cache_grows_during_the_measured_rounds_then_stops(targets: Path) -> None:
    # The cache fills during rounds 1-3 of the measured ones: a first-differences test would call it a leak.
    report = check_json(targets, "leaks", "targets:bounded_cache", "--warmup", "0", expect=0)
    objects = [r["objects"] for r in report["rounds"]]
    assert objects[2] - objects[0] >= 1500 and abs(objects[-1] - objects[4]) < 100, objects


def test_leaks_table_sparklines_and_plot(targets: Path) -> None:
    proc = forkguard_check(targets, "leaks", "targets:py_leak", "--rounds", "5", "--calls-per-round", "300")
    assert proc.returncode == 1
    assert "verdict: LEAK" in proc.stdout and "▁" in proc.stdout and "█" in proc.stdout
    pytest.importorskip("matplotlib")
    proc = forkguard_check(targets, "leaks", "targets:c_clean", "--rounds", "4", "--plot", "rounds.png")
    assert proc.returncode == 0, proc.stderr
    assert (targets / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "message"), [
    (["leaks", "targets:nope"], "has no function 'nope'"),
    (["leaks", "no_such_module:f"], "cannot import 'no_such_module'"),
    (["leaks", "missing/file.py:f"], "no file 'missing/file.py'"),
    (["leaks", "missing.py"], "is not a file"),
    (["leaks", "targets:not-a-name"], "is not a function name"),
    (["leaks", "targets:not_callable"], "is not callable"),
    (["leaks", "targets:raises"], "raised RuntimeError: boom from the target"),
    (["leaks", "targets:py_leak", "--rounds", "2"], "rounds must be an int >= 3"),
    (["leaks", "targets:py_leak", "--plot", "x.svg"], "give a FILE.png"),
    (["fork", "targets:raises"], "raised RuntimeError: boom from the target (before any fork)"),
    (["fork", "targets:nope", "--forks", "0"], "--forks must be an int >= 1"),
    (["crash"], "give a command after --"),
    (["hang", "--timeout", "0", "--", "true"], "--timeout must be a number of seconds > 0"),
    (["crash", "--", "no-such-command-xyz"], "'no-such-command-xyz': command not found"),
    ([], "give a check: leaks, memray, valgrind, crash, hang or fork"),
])
def test_bad_input_is_one_clear_line(targets: Path, args: list[str], message: str) -> None:
    proc = forkguard_check(targets, *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (targets / "x.svg").exists()


# --- crash and hang


def test_segfault_reported_with_signal_and_the_c_frame(targets: Path) -> None:
    require_tool("gdb")
    report = check_json(targets, "crash", "--", sys.executable, "crash_script.py", expect=1)
    assert report["crashed"] and report["signal"] == "SIGSEGV" and report["exit_code"] == -11
    assert any("crash_script.py\", line 3 in run_it" in frame for frame in report["python_stack"])
    assert report["native_stack"][0].startswith("#0 crash_here"), report["native_stack"][:3]


def test_crash_check_on_a_command_that_exits(targets: Path) -> None:
    proc = forkguard_check(targets, "crash", "--", sys.executable, "-c", "raise SystemExit(3)")
    assert proc.returncode == 0 and "did not crash (exit status 3)" in proc.stdout


def test_deadlock_after_fork_dumped_and_killed(targets: Path) -> None:
    require_tool("gdb")
    report = check_json(targets, "hang", "--timeout", "2", "--", sys.executable, "deadlock_script.py", expect=1)
    assert report["hung"] and 2 <= report["seconds"] < 60
    parent, child = report["processes"]
    assert any("line 9 in <module>" in f for f in parent["python_stack"])    # os.waitpid
    assert any("line 7 in <module>" in f for f in child["python_stack"])     # the child's hold_lock()
    assert any("hold_lock" in f for f in child["native_stack"]) and any("lock_wait" in f or "futex" in f
                                                                          for f in child["native_stack"])
    for proc in (parent, child):
        assert not running(proc["pid"]), "hung processes must be killed"


def test_hang_check_on_a_command_that_finishes(targets: Path) -> None:
    proc = forkguard_check(targets, "hang", "--timeout", "20", "--", sys.executable, "-c", "pass")
    assert proc.returncode == 0 and "finished in" in proc.stdout


# --- fork stress


def test_fork_stress_unsafe_target_hangs_late_forks(targets: Path) -> None:
    report = check_json(targets, "fork", "targets:unsafe", "--forks", "4", "--timeout", "1", expect=1)
    assert report["early"]["clean"] == 4
    late = report["late"]
    assert late["hung"] >= 3 and late["clean"] + late["hung"] == 4, late


def test_fork_stress_guarded_target_kept_safe_by_the_late_fork_policy(targets: Path) -> None:
    proc = forkguard_check(targets, "fork", "targets:guarded", "--forks", "4", "--timeout", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "late forks were safe: the late-fork policy disabled native" in proc.stdout
    report = check_json(targets, "fork", "targets:guarded", "--forks", "4", "--timeout", "1", expect=0)
    assert report["late"]["clean"] == 4 and report["late"]["disabled_features"] == ["native"]
    assert report["early"]["clean"] == 4 and report["early"]["disabled_features"] == []


def test_fork_stress_counts_crashes_by_signal(targets: Path) -> None:
    report = check_json(targets, "fork", "targets:owner_only", "--forks", "3", expect=1)
    assert report["early"]["crashed"] == {"SIGABRT": 3} and report["late"]["crashed"] == {"SIGABRT": 3}
    assert report["early"]["clean"] == report["late"]["clean"] == 0


# --- valgrind and memray


def test_valgrind_finds_the_c_leak_not_cpython_noise(targets: Path) -> None:
    require_tool("valgrind")
    report = check_json(targets, "valgrind", "--", sys.executable, "vg_leak.py", expect=1)
    assert report["losses"] and report["losses"][0]["kind"] == "Leak_DefinitelyLost"
    # five 1 KiB blocks, the last one still reachable through the library's ``last`` pointer
    assert report["losses"][0]["bytes"] == 4 * 1024 and report["losses"][0]["blocks"] == 4
    assert report["losses"][0]["stack"][1].startswith("leak_kb")
    clean = check_json(targets, "valgrind", "--", sys.executable, "vg_clean.py", expect=0)
    assert clean["losses"] == []


def test_memray_finds_the_c_leak_site(targets: Path) -> None:
    pytest.importorskip("memray")
    report = check_json(targets, "memray", "targets:c_leak", "--calls", "200", "-o", "leaks.html", expect=0)
    top = report["sites"][0]
    assert top["where"].startswith("leak_kb") and top["bytes"] == 200 * 1024 and top["allocations"] == 200
    assert "<html" in (targets / "leaks.html").read_text()[:2000].lower()
    clean = check_json(targets, "memray", "targets:c_clean", "--calls", "200", "-o", "clean.html", expect=0)
    assert clean["leaked_bytes"] < 4096


def test_memray_missing_is_one_clear_line(targets: Path, tmp_path: Path) -> None:
    (tmp_path / "memray.py").write_text("raise ImportError('memray is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(targets)])}
    proc = subprocess.run([sys.executable, "-m", "forkguard", "check", "memray", "targets:c_leak"], capture_output=True,
                          text=True, cwd=targets, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == ("forkguard check: error: memray is not installed: pip install 'forkguard[memray]' "
                           "(or pip install memray)\n")


def test_script_target_runs_as_main_on_each_call(targets: Path) -> None:
    report = check_json(targets, "leaks", "vg_leak.py", "--rounds", "6", "--calls-per-round", "100", expect=1)
    rss = trend(report, "rss_bytes")
    assert rss["leaking"] and 4 * 1024 <= rss["per_call"] <= 6.5 * 1024, rss   # five 1 KiB leaks a run


def test_crash_without_gdb_still_reports_the_python_stack(targets: Path) -> None:
    env = {**os.environ, "PATH": "/nonexistent", "PYTHONPATH": f"{ROOT}{os.pathsep}{targets}"}
    proc = subprocess.run([sys.executable, "-m", "forkguard", "check", "crash", "--json", "--", sys.executable,
                           "crash_script.py"], capture_output=True, text=True, cwd=targets, env=env, timeout=120)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["signal"] == "SIGSEGV" and report["native_stack"] == []
    assert report["native_note"] == "gdb is not installed (apt-get install gdb) for the native stack"
    assert any("in run_it" in frame for frame in report["python_stack"])
