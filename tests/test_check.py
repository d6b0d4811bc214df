"""forkguard check: real leaks, crashes, hangs and fork deadlocks in a C library compiled here, and Python targets."""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
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
struct node { struct node *next; char pad[56]; };
void leak_kb(void) { char *p = malloc(1024); memset(p, 1, 1024); last = p; }
void clean_call(void) { char *p = malloc(1024); memset(p, 1, 1024); last = p; free(p); }
void crash_here(void) { volatile int *p = 0; *p = 42; }
int recurse(int n) { volatile char pad[64]; pad[0] = (char)n; return recurse(n + 1) + pad[0]; }
void locked_work(void) { pthread_mutex_lock(&lock); usleep(20000); pthread_mutex_unlock(&lock); }
void hold_lock(void) { pthread_mutex_lock(&lock); }
void init_owner(void) { owner = getpid(); }
void owner_only(void) { if (getpid() != owner) abort(); }
static pthread_mutex_t pool = PTHREAD_MUTEX_INITIALIZER;   /* a library's state, guarded at fork */
static void before_fork(void) { pthread_mutex_lock(&pool); pthread_mutex_unlock(&pool); }
void install_atfork(void) { pthread_atfork(before_fork, NULL, NULL); }
void with_pool(void (*callback)(void)) { pthread_mutex_lock(&pool); callback(); pthread_mutex_unlock(&pool); }
struct node *volatile chain;   /* published, then dropped: the nodes are really written */
void leak_chain(void) { struct node *a = malloc(sizeof *a); a->next = malloc(sizeof *a); a->next->next = 0;
                        chain = a; chain = 0; }
"""

TARGETS = """
import ctypes, os, threading, forkguard
lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(__file__)), "libnative.so"))
lib.init_owner()
native = forkguard.Feature("native")
_leaked = []
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
def chatty(): print("a line the target prints on every call")
def crash_later():
    _calls[0] += 1
    if _calls[0] > 20000:
        lib.crash_here()
def crash_in_thread():
    if threading.current_thread() is not threading.main_thread():
        lib.crash_here()
def hang_later():
    _calls[0] += 1
    if _calls[0] > 20000:
        threading.Event().wait()
lib.install_atfork()
_nap = ctypes.CFUNCTYPE(None)(lambda: __import__("time").sleep(0.005))   # Python: it needs the GIL back
def pool_user(): lib.with_pool(_nap)   # holds the library's lock while its callback waits for the GIL
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
    (work / "vg_chain.py").write_text("import targets\nfor _ in range(3): targets.lib.leak_chain()\n")
    (work / "overflow.py").write_text("import targets\ntargets.lib.recurse(0)\n")
    return work


def forkguard_check(work: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{work}", **(env or {})}
    return subprocess.run([sys.executable, "-m", "forkguard", "check", *args], capture_output=True, text=True,
                          cwd=work, env=env, timeout=timeout)


def check_json(work: Path, *args: str, expect: int, **kwargs) -> dict:
    args = (*args, "--json") if "--" not in args else (*args[:args.index("--")], "--json", *args[args.index("--"):])
    proc = forkguard_check(work, *args, **kwargs)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    validate(report)
    return report


def validate(report: dict) -> None:
    """Every --json report follows the shipped, versioned schema."""
    import jsonschema

    schema = json.loads((ROOT / "forkguard" / "check" / "schema.json").read_text())
    jsonschema.validate(report, schema)


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a killed orphan waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def trend(report: dict, metric: str) -> dict:
    return next(t for t in report["trends"] if t["metric"] == metric)


NOBODY = pwd.getpwnam("nobody")


# --- leaks


def test_c_leak_found_with_its_size_per_call(targets: Path) -> None:
    report = check_json(targets, "leaks", "targets.py:c_leak", "--budget", "8", expect=1)
    rss = trend(report, "rss_bytes")
    # 1024 B malloc'd per call: a 1040 B chunk with glibc's header
    assert rss["verdict"] == "leak" and 1000 <= rss["low"] <= rss["per_call"] <= rss["high"] <= 1100, rss
    assert trend(report, "objects")["verdict"] != "leak" and trend(report, "traced_bytes")["verdict"] != "leak"
    phases = [r["phase"] for r in report["rounds"]]
    assert phases[0] == "warmup" and "rss" in phases and phases.index("rss") > phases.count("warmup") - 1
    assert all(r["max_rss_bytes"] >= r["rss_bytes"] for r in report["rounds"])


def test_python_leak_found_with_its_objects_and_line(targets: Path) -> None:
    report = check_json(targets, "leaks", "targets:py_leak", "--budget", "10", expect=1)
    objects = trend(report, "objects")
    assert objects["verdict"] == "leak" and 0.99 <= objects["per_call"] <= 1.01, objects   # one list per call
    heap = trend(report, "traced_bytes")
    # a list of 32 pointers and its header, measured with tracemalloc's bookkeeping kept out of RSS
    assert heap["verdict"] != "clean" and 300 <= heap["per_call"] <= 420, heap
    assert trend(report, "rss_bytes")["per_call"] < 600   # not inflated by tracemalloc (it was off)
    assert any(site.startswith(str(targets / "targets.py")) for site in report["growth_sites"])


@pytest.mark.parametrize(("target", "verdict"), [
    ("leak_small", r"verdict: LEAK: RSS \+32\.0 B/call"),                                   # 16 B malloc'd a call
    ("leak_rare", r"Python heap growth by line \(tracemalloc\): \S+leaky\.py:\d+ \+1\.6 B/call"),   # 1 in 100
])
def test_readme_examples_small_and_rare_leaks_found(target: str, verdict: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "forkguard", "check", "leaks", f"examples/leaky.py:{target}",
                           "--budget", "10"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and re.search(verdict, proc.stdout), proc.stdout + proc.stderr


def test_target_printing_on_stdout_is_captured_not_parsed(targets: Path) -> None:
    report = check_json(targets, "leaks", "targets:chatty", "--budget", "3", expect=0)
    stdout = report["output"]["stdout"]
    assert stdout["lines"] >= 1000 and stdout["tail"][-1] == "a line the target prints on every call"
    proc = forkguard_check(targets, "leaks", "targets:chatty", "--budget", "3")
    assert proc.returncode == 0 and re.search(r"stdout: \d+ line\(s\)", proc.stdout), proc.stdout


def test_segfault_during_rounds_names_the_signal_and_points_to_check_crash(targets: Path) -> None:
    report = check_json(targets, "leaks", "targets:crash_later", "--budget", "3", expect=1)
    assert report["verdict"] == "crashed" and report["crash"]["signal"] == "SIGSEGV"
    assert report["crash"]["after_calls"] <= 20001 and "forkguard check crash" in report["crash"]["hint"]
    assert any("in crash_later" in frame for frame in report["crash"]["python_stack"])
    text = forkguard_check(targets, "leaks", "targets:crash_later", "--budget", "3")
    assert text.returncode == 1 and "CRASHED: the target was killed by SIGSEGV" in text.stdout


def test_a_round_that_never_ends_is_a_hang_with_stacks(targets: Path) -> None:
    report = check_json(targets, "leaks", "targets:hang_later", "--budget", "3", "--timeout", "2", expect=1)
    assert report["verdict"] == "hung" and report["hang"]["timeout"] == 2
    worker = report["hang"]["processes"][0]
    assert any("in hang_later" in frame for frame in worker["python_stack"])
    assert not running(worker["pid"])


def test_leaks_text_plot_json_and_sparklines(targets: Path) -> None:
    proc = forkguard_check(targets, "leaks", "targets:py_leak", "--budget", "8", "--plot", "rounds.png")
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"^verdict: LEAK: .*objects \+1/call \(95%: 1 to 1\)", proc.stdout, re.M), proc.stdout
    assert re.search(r"^RSS +[▁▂▃▄▅▆▇█]{12,}", proc.stdout, re.M), proc.stdout   # sparklines even with --plot
    assert (targets / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clean = forkguard_check(targets, "leaks", "targets.py:c_clean", "--budget", "8", "--plot", "clean.svg")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert re.search(r"verdict: clean: RSS(: no growth| < \S+ B/call), objects.* with 95% confidence", clean.stdout)
    svg = (targets / "clean.svg").read_text()
    assert "warm-up (left out)" in svg and "fitted:" in svg and "RSS: clean" in svg


def test_progress_bar_starts_before_round_one_and_never_shares_a_line_with_an_error(targets: Path) -> None:
    import pty

    def run(*args: str) -> tuple[int, str]:
        master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{targets}"}
        proc = subprocess.Popen([sys.executable, "-m", "forkguard", "check", "leaks", *args], stdout=subprocess.PIPE,
                                stderr=slave, cwd=targets, env=env)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        return proc.wait(60), b"".join(chunks).decode()

    code, stderr = run("targets:c_clean", "--budget", "2")
    assert code == 0 and "round 0" in stderr and stderr.index("round 0") < stderr.index("round 1")
    assert stderr.endswith("\r\x1b[K")   # erased: the report starts on a clean line
    code, stderr = run("targets:raises", "--budget", "2")
    assert code == 2 and "round 0" in stderr
    before, error = stderr.rsplit("\r\x1b[K", 1)
    assert "[" in before and error.startswith("forkguard check: error: targets:raises raised RuntimeError")


def test_planted_modules_in_the_directory_never_run(targets: Path, tmp_path: Path) -> None:
    """A json.py or tracemalloc.py lying where the check runs (or beside TARGET) is not imported, even as root."""
    planted = tmp_path / "planted"
    planted.mkdir()
    for name in ("json", "tracemalloc", "random", "ctypes", "sitecustomize", "memray", "forkguard"):
        (planted / f"{name}.py").write_text(f"open({str(tmp_path / ('RAN-' + name))!r}, 'w').close()\n")
    (planted / "target_mod.py").write_text("import json\ndef f(): json.dumps([1])\n")
    # The console script, as users run it (`python -m` would put the directory first for the checker itself).
    forkguard = str(Path(sys.executable).parent / "forkguard")
    runs = [("leaks", "target_mod:f", "--budget", "2"), ("leaks", f"{planted / 'target_mod.py'}:f", "--budget", "2"),
            ("fork", "target_mod:f", "--forks", "2"), ("memray", "target_mod:f", "--calls", "10", "-o", "/dev/null")]
    for args in runs:
        proc = subprocess.run([forkguard, "check", *args], capture_output=True, text=True, cwd=planted,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("RAN-")) == []
    assert not (planted / "__pycache__").exists()   # no root-owned bytecode left beside TARGET either


def test_plot_through_a_planted_symlink_is_refused_before_the_target_runs(targets: Path, tmp_path: Path) -> None:
    sticky, victim = planted_link(tmp_path)
    proc = forkguard_check(targets, "leaks", "targets:c_leak", "--budget", "2", "--plot", str(sticky / "r.png"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "refusing to write" in proc.stderr and "protected_symlinks" in proc.stderr
    assert victim.read_text() == "precious"


def planted_link(tmp_path: Path) -> tuple[Path, Path]:
    """A sticky world-writable directory holding a link, owned by nobody, to a file of ours."""
    sticky = tmp_path / "shared"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    os.chmod(tmp_path, 0o755)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("r.png", "leaks.html"):
        os.symlink(victim, sticky / name)
        os.lchown(sticky / name, NOBODY.pw_uid, NOBODY.pw_gid)
    return sticky, victim


# --- crash and hang


def test_segfault_reported_with_signal_and_the_c_frame(targets: Path) -> None:
    require_tool("gdb")
    report = check_json(targets, "crash", "--", sys.executable, "crash_script.py", expect=1)
    assert report["crashed"] and report["signal"] == "SIGSEGV" and report["exit_code"] == -11
    assert any("crash_script.py\", line 3 in run_it" in frame for frame in report["python_stack"])
    assert report["native_stack"][0].startswith("#0 crash_here"), report["native_stack"][:3]


def test_stack_overflow_frames_collapsed(targets: Path) -> None:
    require_tool("gdb")
    report = check_json(targets, "crash", "--", "sh", "-c", f"ulimit -s 1024; exec {sys.executable} overflow.py",
                        expect=1)
    first = report["native_stack"][0]
    match = re.match(r"#0-#(\d+) recurse from .*libnative\.so \(× (\d+)\)$", first)
    assert match and int(match[2]) == int(match[1]) + 1 > 5000, first
    assert len(report["native_stack"]) < 60 and len(json.dumps(report)) < 20000


def test_crash_check_on_a_command_that_exits(targets: Path) -> None:
    proc = forkguard_check(targets, "crash", "--", sys.executable, "-c", "print('done'); raise SystemExit(3)")
    assert proc.returncode == 0 and "did not crash (exit status 3" in proc.stdout and "  | done" in proc.stdout


def test_crash_run_past_its_timeout_is_a_hang(targets: Path) -> None:
    report = check_json(targets, "crash", "--timeout", "2", "--", sys.executable, "-c", "import time; time.sleep(60)",
                        expect=1)
    assert not report["crashed"] and report["hang"]["hung"]
    assert any('File "<string>", line 1' in f for f in report["hang"]["processes"][0]["python_stack"])


@pytest.mark.parametrize("check", ["crash", "hang", "valgrind"])
def test_user_option_runs_the_command_as_that_user(targets: Path, check: str) -> None:
    if check == "valgrind":
        require_tool("valgrind")
    report = check_json(targets, check, "--user", "nobody", "--", "id", "-u", expect=0)
    assert report["output"]["stdout"]["tail"] == [str(NOBODY.pw_uid)] and report["user"] == "nobody"


def test_crash_as_another_user_still_gets_gdb_stack_as_root(targets: Path) -> None:
    require_tool("gdb")
    report = check_json(targets, "crash", "-u", "nobody", "--", "sh", "-c", "id -u; kill -SEGV $$", expect=1)
    assert report["signal"] == "SIGSEGV" and report["output"]["stdout"]["tail"] == [str(NOBODY.pw_uid)]
    assert report["native_note"] == "" and report["native_stack"][0].startswith("#0 "), report["native_stack"][:2]


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


def test_hang_sends_sigusr1_only_to_processes_that_catch_it_and_kills_daemons(targets: Path, tmp_path: Path) -> None:
    """A shell child has no SIGUSR1 handler: it keeps running for gdb. A double-forked daemon is killed too."""
    require_tool("gdb")
    pidfile = tmp_path / "daemon.pid"
    script = (f"import os, subprocess, time\n"
              f"subprocess.Popen(['sh', '-c', 'sleep 300'])\n"
              f"subprocess.Popen(['setsid', 'sh', '-c', 'sleep 301 & echo $! > {pidfile}'])\n"
              f"time.sleep(300)\n")
    report = check_json(targets, "hang", "--timeout", "3", "--", sys.executable, "-c", script, expect=1)
    by_command = {p["command"]: p for p in report["processes"]}
    shell, daemon = by_command["sh -c sleep 300"], by_command["sleep 301"]
    assert shell["python_stack"] == [] and shell["native_note"] == "" and shell["native_stack"], shell
    assert daemon["pid"] == int(pidfile.read_text()) and daemon["native_stack"]
    python = next(p for p in report["processes"] if p["command"].startswith(sys.executable))
    assert any('File "<string>", line 4' in f for f in python["python_stack"])
    for proc in report["processes"]:
        assert not running(proc["pid"]), proc


def test_hang_check_on_a_command_that_finishes(targets: Path) -> None:
    proc = forkguard_check(targets, "hang", "--timeout", "20", "--", sys.executable, "-c", "pass")
    assert proc.returncode == 0 and "finished in" in proc.stdout


def test_crash_without_gdb_still_reports_the_python_stack(targets: Path) -> None:
    env = {"PATH": "/nonexistent"}
    report = check_json(targets, "crash", "--", sys.executable, "crash_script.py", expect=1, env=env)
    assert report["signal"] == "SIGSEGV" and report["native_stack"] == []
    assert report["native_note"] == "gdb is not installed (apt-get install gdb) for the native stack"
    assert any("in run_it" in frame for frame in report["python_stack"])


# --- fork stress


def test_fork_stress_unsafe_target_hangs_late_forks(targets: Path) -> None:
    report = check_json(targets, "fork", "targets:unsafe", "--forks", "4", "--timeout", "1", expect=1)
    assert report["early"]["clean"] == 4 and report["parent_hang"] is None
    late = report["late"]
    assert late["hung"] >= 3 and late["clean"] + late["hung"] == 4, late


def test_fork_stress_guarded_target_kept_safe_by_the_late_fork_policy(targets: Path) -> None:
    proc = forkguard_check(targets, "fork", "targets:guarded", "--forks", "4", "--timeout", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "late forks were safe: the late-fork policy disabled native" in proc.stdout
    report = check_json(targets, "fork", "targets:guarded", "--forks", "4", "--timeout", "1", expect=0)
    assert report["late"]["clean"] == 4 and report["late"]["disabled_features"] == ["native"]
    assert report["early"]["clean"] == 4 and report["early"]["disabled_features"] == []


def test_fork_stress_worker_killed_by_the_target_is_a_finding(targets: Path) -> None:
    report = check_json(targets, "fork", "targets:crash_in_thread", "--forks", "2", expect=1)
    assert report["crash"]["signal"] == "SIGSEGV" and report["early"]["clean"] == 2
    assert any("in crash_in_thread" in frame for frame in report["crash"]["python_stack"])


def test_hang_check_kills_what_a_finished_command_left_running(targets: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    report = check_json(targets, "hang", "--timeout", "20", "--", "sh", "-c", f"setsid sleep 300 & echo $! > {pidfile}",
                        expect=0)
    daemon = int(pidfile.read_text())
    assert not report["hung"] and report["left_running"] == [daemon] and not running(daemon)


def test_fork_stress_counts_crashes_by_signal(targets: Path) -> None:
    report = check_json(targets, "fork", "targets:owner_only", "--forks", "3", expect=1)
    assert report["early"]["crashed"] == {"SIGABRT": 3} and report["late"]["crashed"] == {"SIGABRT": 3}
    assert report["early"]["clean"] == report["late"]["clean"] == 0


def test_parent_fork_deadlock_in_an_at_fork_handler_is_a_finding(targets: Path) -> None:
    """fork() runs the library's at-fork handler, which waits for a lock a thread holds while it waits for the GIL."""
    require_tool("gdb")
    report = check_json(targets, "fork", "targets:pool_user", "--forks", "3", "--timeout", "2", expect=1)
    hang = report["parent_hang"]
    assert hang["waiting_for"] == "fork" and hang["kind"] == "late" and hang["index"] == 0
    assert report["early"]["clean"] == 3   # the results gathered before the deadlock are kept
    assert hang["fork_handler"]["function"] == "before_fork"
    assert hang["fork_handler"]["library"] == str(targets / "libnative.so")
    worker = hang["processes"][0]
    assert any("in _one_fork" in frame for frame in worker["python_stack"])
    assert any("__run_prefork_handlers" in f or "__run_fork_handlers" in f for f in worker["native_stack"])
    assert not running(worker["pid"])
    text = forkguard_check(targets, "fork", "targets:pool_user", "--forks", "1", "--timeout", "2")
    assert text.returncode == 1
    assert re.search(r"the late fork #1 did not return within 2 s: the parent's own fork\(\) is stuck in the at-fork "
                     r"handler before_fork of \S*libnative\.so", text.stdout), text.stdout


def test_fork_check_survives_numpy_openblas(tmp_path: Path) -> None:
    """After a matmul, OpenBLAS's at-fork handler may deadlock the parent's fork(), or its children hang: either is
    reported, in seconds, with the results so far (the check used to hang for minutes, then die with a traceback)."""
    require_tool("gdb")
    pytest.importorskip("numpy")
    (tmp_path / "np_target.py").write_text("import numpy\na = numpy.random.rand(300, 300)\n"
                                           "def matmul():\n    return a @ a\n")
    report = check_json(tmp_path, "fork", "np_target:matmul", "--forks", "3", "--timeout", "2", expect=1)
    assert report["early"]["clean"] == 3 and report["seconds"] < 60
    hang = report["parent_hang"]
    if hang is None:
        assert report["late"]["hung"] >= 1, report["late"]
    else:
        assert hang["kind"] == "late" and "openblas" in hang["fork_handler"]["library"]
        assert "blas" in hang["fork_handler"]["function"]
        assert not running(hang["processes"][0]["pid"])


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


def test_valgrind_counts_indirect_losses_once(targets: Path) -> None:
    require_tool("valgrind")
    report = check_json(targets, "valgrind", "--", sys.executable, "vg_chain.py", expect=1)
    kinds = {loss["kind"]: loss for loss in report["losses"]}
    definite, indirect = kinds["Leak_DefinitelyLost"], kinds["Leak_IndirectlyLost"]
    assert (definite["bytes"], definite["indirect_bytes"], indirect["bytes"]) == (3 * 64, 3 * 64, 3 * 64)
    assert report["leaked_bytes"] == 6 * 64   # three chains of two 64-byte nodes, not 9 nodes


def test_memray_finds_the_c_leak_site_and_exits_1(targets: Path) -> None:
    pytest.importorskip("memray")
    report = check_json(targets, "memray", "targets:c_leak", "--calls", "200", "-o", "leaks.html",
                        "--capture", "leaks.bin", expect=1)
    top = report["sites"][0]
    assert top["where"].startswith("leak_kb") and top["bytes"] == 200 * 1024 and top["allocations"] == 200
    assert report["leaking"] and report["leaked_bytes"] > report["min_bytes"] == 16384
    assert "<html" in (targets / "leaks.html").read_text()[:2000].lower()
    assert (targets / "leaks.bin").stat().st_size > 0
    clean = check_json(targets, "memray", "targets:c_clean", "--calls", "200", "-o", "clean.html", expect=0)
    assert clean["leaked_bytes"] < 16384 and not clean["leaking"]
    below = check_json(targets, "memray", "targets:c_leak", "--calls", "10", "--min-bytes", "20000", "-o",
                       "/dev/null", expect=0)
    assert 10 * 1024 <= below["leaked_bytes"] < 16384
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)   # written through, not replaced by a file


def test_memray_output_through_a_planted_symlink_is_refused(targets: Path, tmp_path: Path) -> None:
    pytest.importorskip("memray")
    sticky, victim = planted_link(tmp_path)
    proc = forkguard_check(targets, "memray", "targets:c_leak", "--calls", "10", "-o", str(sticky / "leaks.html"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "refusing to write" in proc.stderr
    assert victim.read_text() == "precious" and os.path.islink(sticky / "leaks.html")


def test_memray_and_valgrind_runs_past_their_timeout_are_hangs(targets: Path) -> None:
    pytest.importorskip("memray")
    require_tool("valgrind")
    report = check_json(targets, "memray", "targets:hang_later", "--calls", "30000", "--timeout", "3", "-o",
                        "hung.html", expect=1)
    assert report["hang"]["timeout"] == 3 and report["flamegraph"] is None and not (targets / "hung.html").exists()
    assert any("in hang_later" in f for f in report["hang"]["processes"][0]["python_stack"])
    report = check_json(targets, "valgrind", "--timeout", "3", "--", sys.executable, "-c",
                        "import time; time.sleep(60)", expect=1)
    assert report["hang"]["hung"] and report["losses"] == []
    assert all(not running(p["pid"]) for p in report["hang"]["processes"])


def test_memray_missing_is_one_clear_line(targets: Path, tmp_path: Path) -> None:
    (tmp_path / "memray.py").write_text("raise ImportError('memray is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(targets)])}
    proc = subprocess.run([sys.executable, "-m", "forkguard", "check", "memray", "targets:c_leak"], capture_output=True,
                          text=True, cwd=targets, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == ("forkguard check: error: memray is not installed: pip install 'forkguard[memray]' "
                           "(or pip install memray)\n")


def test_script_target_runs_as_main_on_each_call(targets: Path) -> None:
    report = check_json(targets, "leaks", "vg_leak.py", "--budget", "6", expect=1)
    rss = trend(report, "rss_bytes")
    assert rss["verdict"] == "leak" and 4 * 1024 <= rss["per_call"] <= 6.5 * 1024, rss   # five 1 KiB leaks a run
