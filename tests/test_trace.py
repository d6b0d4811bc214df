"""forkguard trace with real BPF programs in the running kernel and with ptrace, on workloads with known syscalls.

The workload makes N getppid() per process and getsid() only in forked children,
so the exact counts say which processes were traced. Tests taking ``backend``
run once per backend: both must give the same numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

ROOT_GETPPID, CHILDREN, CHILD_GETPPID, CHILD_GETSID, EXEC_GETPPID = 300, 3, 50, 7, 40

WORKLOAD = f'''
import os, sys
for _ in range({ROOT_GETPPID}):
    os.getppid()
pids = []
for _ in range({CHILDREN}):
    pid = os.fork()
    if pid == 0:
        for _ in range({CHILD_GETPPID}):
            os.getppid()
        for _ in range({CHILD_GETSID}):
            os.getsid(0)
        os._exit(0)
    pids.append(pid)
pid = os.fork()
if pid == 0:   # a child that execs: its membership survives exec
    os.execv(sys.executable, [sys.executable, "-S", "-c", "import os\\nfor _ in range({EXEC_GETPPID}): os.getppid()"])
pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
'''


@pytest.fixture(params=["bpf", "ptrace"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn; the BPF run needs BPF (and fails without it under FORKGUARD_REQUIRE_BPF=1)."""
    if request.param == "bpf":
        request.getfixturevalue("bpf")
    return request.param


def trace(args: list[str], command: list[str], *, check: bool = True,
          backend: str = "bpf") -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-m", "forkguard", "trace", "--format", "json", "--backend", backend, *args,
                           "--", *command],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check:
        assert proc.returncode == 0, proc.stderr
    return (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc


def count(report: dict, name: str) -> int:
    return sum(s["count"] for s in report["syscalls"] if s["name"] == name)


@pytest.fixture
def workload(tmp_path: Path) -> list[str]:
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    return [sys.executable, "-S", str(script)]


def test_exact_counts_for_the_root_alone_and_for_the_whole_tree(backend, workload):
    alone, _ = trace([], workload, backend=backend)
    tree, _ = trace(["--follow-forks"], workload, backend=backend)
    assert count(alone, "getppid") == ROOT_GETPPID
    assert count(alone, "getsid") == 0                    # only the children make it
    assert alone["processes_seen"] == 1
    assert count(tree, "getppid") == ROOT_GETPPID + CHILDREN * CHILD_GETPPID + EXEC_GETPPID
    assert count(tree, "getsid") == CHILDREN * CHILD_GETSID
    assert tree["processes_seen"] == 1 + CHILDREN + 1
    assert tree["enrolments_dropped"] == 0


def test_per_process_breakdown_matches_each_process(backend, workload):
    report, _ = trace(["--follow-forks", "--per-process"], workload, backend=backend)
    by_getsid = sorted(p["syscalls"].get("getsid", 0) for p in report["processes"])
    assert by_getsid == [0, 0] + [CHILD_GETSID] * CHILDREN
    getppid = sorted(p["syscalls"].get("getppid", 0) for p in report["processes"])
    assert getppid == sorted([ROOT_GETPPID, EXEC_GETPPID] + [CHILD_GETPPID] * CHILDREN)
    assert all(p["comm"].startswith("python") for p in report["processes"])   # names kept after they exited


def test_interval_prints_a_live_view_while_the_command_runs(bpf):
    proc = subprocess.run([sys.executable, "-m", "forkguard", "trace", "--interval", "0.2", "--", sys.executable, "-S",
                           "-c", "import os, time\nfor _ in range(10):\n    os.getppid(); time.sleep(0.1)"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0
    assert proc.stdout.count("forkguard trace: pid") >= 3   # refreshed views, then the final one


def test_threads_are_counted_and_a_thread_exit_does_not_evict_its_process(backend, tmp_path):
    script = tmp_path / "threads.py"
    script.write_text('''
import os, threading
pid = os.fork()
if pid == 0:
    def work():
        for _ in range(100):
            os.getppid()
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads: t.start()
    for t in threads: t.join()        # the threads have exited...
    for _ in range(50):               # ...and the process goes on
        os.getppid()
    os._exit(0)
os.waitpid(pid, 0)
''')
    report, _ = trace(["--follow-forks"], [sys.executable, "-S", str(script)], backend=backend)
    assert count(report, "getppid") == 3 * 100 + 50


def test_sampling_never_changes_the_aggregate(backend, workload):
    counts = {}
    for sample in ("0", "1", "1000"):
        report, _ = trace(["--follow-forks", "--sample", sample], workload, backend=backend)
        counts[sample] = (count(report, "getppid"), count(report, "getsid"))
    expected = (ROOT_GETPPID + CHILDREN * CHILD_GETPPID + EXEC_GETPPID, CHILDREN * CHILD_GETSID)
    assert counts == {"0": expected, "1": expected, "1000": expected}


def test_a_full_process_map_is_counted_and_reported_not_a_crash(backend, tmp_path):
    script = tmp_path / "many.py"
    script.write_text('''
import os
r, w = os.pipe()
pids = []
for _ in range(7):                    # 8 processes alive at once: the root and 7 children
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)                 # wait until every child exists
        for _ in range(10):
            os.getppid()
        os._exit(0)
    pids.append(pid)
os.close(r); os.close(w)
for pid in pids:
    os.waitpid(pid, 0)
''')
    report, _ = trace(["--follow-forks", "--max-pids", "2"], [sys.executable, "-S", str(script)], backend=backend)
    assert report["processes_seen"] == 2 and report["enrolments_dropped"] == 6
    assert count(report, "getppid") == 10         # the one child that fitted
    table = subprocess.run([sys.executable, "-m", "forkguard", "trace", "-f", "--max-pids", "2", "--backend", backend,
                            "--",
                            sys.executable, "-S", str(script)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "6 process(es) could not be traced: the process map is full (--max-pids 2)" in table.stdout


def test_attach_to_a_running_process_with_p(backend, tmp_path):
    go = tmp_path / "go"
    target = subprocess.Popen([sys.executable, "-S", "-c", f'''
import os, time
while not os.path.exists({str(go)!r}):
    time.sleep(0.01)
for _ in range(123):
    os.getppid()
'''])
    tracer = subprocess.Popen([sys.executable, "-m", "forkguard", "trace", "--format", "json", "--backend", backend,
                               "-p", str(target.pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "tracing pid" in tracer.stderr.readline()     # attached
    go.touch()
    target.wait(30)
    out, _ = tracer.communicate(timeout=30)
    assert tracer.returncode == 0
    assert count(json.loads(out), "getppid") == 123


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])


@pytest.mark.parametrize("stop_by", ["ctrl-c", "duration"])
def test_ctrl_c_or_duration_detaches_and_leaves_the_attached_process_running_untraced(backend, stop_by, tmp_path):
    counter = tmp_path / "counter"
    target = subprocess.Popen([sys.executable, "-S", "-c", f'''
import os, time
n = 0
while True:
    os.getppid()
    n += 1
    if n % 1000 == 0:
        with open({str(counter)!r} + ".tmp", "w") as f:
            f.write(str(n))
        os.replace({str(counter)!r} + ".tmp", {str(counter)!r})
'''])
    try:
        duration = ["--duration", "0.5"] if stop_by == "duration" else []
        tracer = subprocess.Popen([sys.executable, "-m", "forkguard", "trace", "--format", "json", "--backend",
                                   backend, *duration, "-p", str(target.pid)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert "tracing pid" in tracer.stderr.readline()
        if stop_by == "ctrl-c":
            time.sleep(0.5)
            tracer.send_signal(signal.SIGINT)
        out, _ = tracer.communicate(timeout=30)
        assert tracer.returncode == (130 if stop_by == "ctrl-c" else 0)
        assert count(json.loads(out), "getppid") > 100         # it was traced...
        assert tracer_pid(target.pid) == 0 and target.poll() is None   # ...and now runs on, untraced
        before = int(counter.read_text())
        time.sleep(0.5)
        assert int(counter.read_text()) > before + 1000   # and keeps going
    finally:
        target.kill()
        target.wait()


def test_signals_reach_the_tracee_and_stop_continue_works(backend, tmp_path):
    script = tmp_path / "signals.py"
    script.write_text('''
import os, signal, time
got = []
signal.signal(signal.SIGUSR1, lambda *a: got.append("usr1"))
os.kill(os.getpid(), signal.SIGUSR1)
pid = os.fork()
if pid == 0:
    time.sleep(0.2)
    os._exit(3)
os.kill(pid, signal.SIGSTOP)                       # a group-stop of a traced child...
_, status = os.waitpid(pid, os.WUNTRACED)
stopped = os.WIFSTOPPED(status)
os.kill(pid, signal.SIGCONT)                       # ...and it goes on after SIGCONT
_, status = os.waitpid(pid, 0)
print("ok" if got == ["usr1"] and stopped and os.WEXITSTATUS(status) == 3 else f"bad {got} {stopped} {status}")
''')
    proc = subprocess.run([sys.executable, "-m", "forkguard", "trace", "-f", "--backend", backend, "--",
                           sys.executable, "-S", str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "ok", proc.stdout


def test_the_commands_exit_status_is_passed_through(backend):
    _, proc = trace([], [sys.executable, "-S", "-c", "import sys; sys.exit(7)"], check=False, backend=backend)
    assert proc.returncode == 7
    _, proc = trace([], [sys.executable, "-S", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"],
                    check=False, backend=backend)
    assert proc.returncode == 128 + 15


def test_json_output_follows_the_shipped_schema(backend, workload):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "forkguard" / "trace" / "schema.json").read_text())
    report, _ = trace(["--follow-forks", "--per-process", "--tree"], workload, backend=backend)
    jsonschema.validate(report, schema)
    assert report["backend"] == backend and len(report["tree"]) == 1 + CHILDREN + 1
    bad = {**report, "syscalls": [{**report["syscalls"][0], "count": -1}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    getppid = next(s for s in report["syscalls"] if s["name"] == "getppid")
    assert sum(getppid["histogram"]) == getppid["count"]
    assert getppid["p50_ns"] <= getppid["p99_ns"] and getppid["max_ns"] <= getppid["total_ns"]


def test_tracer_api_returns_plain_data(bpf, tmp_path):
    from forkguard.trace import Tracer, spawn_held

    script = tmp_path / "w.py"
    script.write_text(WORKLOAD)
    pid, release = spawn_held([sys.executable, "-S", str(script)])
    with Tracer(pid, follow_forks=True) as tracer:
        started = time.monotonic()
        release()
        os.waitpid(pid, 0)
        snapshot = tracer.snapshot()
    assert snapshot.count_of("getsid") == CHILDREN * CHILD_GETSID
    assert snapshot.backend == "bpf" and snapshot.elapsed_s >= time.monotonic() - started - 1
    assert snapshot.to_dict()["totals"]["count"] == snapshot.total_count


@pytest.mark.parametrize("args, error", [
    (["-p", "99999999"], "no process 99999999"),
    ([], "give a process to trace"),
    (["--max-pids", "0", "--", "true"], "--max-pids must be >= 1"),
    (["--histogram", "nosuchcall", "--", "true"], "unknown syscall 'nosuchcall'"),
    (["--events", "--format", "openmetrics", "--", "true"], "--events prints lines or JSON lines"),
    (["--format", "openmetrics", "-o", "/nonexistent/dir/x.prom", "--", "true"], "its directory does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, error):
    proc = subprocess.run([sys.executable, "-m", "forkguard", "trace", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("forkguard trace: error: ") and error in proc.stderr


def test_unprivileged_user_falls_back_to_ptrace_or_gets_a_clear_error(bpf):
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "forkguard",
                    "trace"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*unprivileged, "--backend", "bpf", "--", "true"], capture_output=True, text=True,
                          cwd="/", env=env, timeout=60)
    assert proc.returncode == 2
    assert "loading BPF programs is not permitted: run as root (or with CAP_BPF and CAP_PERFMON)" in proc.stderr
    # /bin/sh, not this Python: a traced exec needs a binary its user may read, and this one may live under /root
    proc = subprocess.run([*unprivileged, "-f", "--format", "json", "--", "/bin/sh", "-c", "/bin/true; /bin/true"],
                          capture_output=True, text=True, cwd="/", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "BPF unavailable (loading BPF programs is not permitted" in proc.stderr
    assert "using the ptrace backend" in proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] == "ptrace"
    assert count(report, "execve") == 3 and report["processes_seen"] >= 2   # sh, then two true


TREE_WORKLOAD = '''
import os, signal, time
pid = os.fork()
if pid == 0:                                   # a child that forks a grandchild, which execs sh
    grandchild = os.fork()
    if grandchild == 0:
        os.execv("/bin/sh", ["/bin/sh", "-c", "exit 5"])
    os.waitpid(grandchild, 0)
    os._exit(2)
os.waitpid(pid, 0)
pid = os.fork()
if pid == 0:                                   # a child killed by SIGTERM
    time.sleep(30)
    os._exit(0)
os.kill(pid, signal.SIGTERM)
os.waitpid(pid, 0)
'''


def test_tree_view_matches_the_fork_exec_exit_structure(backend, tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE_WORKLOAD)
    report, _ = trace(["-f", "--tree"], [sys.executable, "-S", str(script)], backend=backend)
    root, child, grandchild, killed = report["tree"]
    assert root["ppid"] is None and root["exit_code"] == 0 and str(script) in root["cmdline"]
    assert child["ppid"] == root["pid"] and child["exit_code"] == 2 and child["execs"] == []
    assert grandchild["ppid"] == child["pid"] and grandchild["exit_code"] == 5
    assert [e["cmdline"] for e in grandchild["execs"]] == ["/bin/sh -c exit 5"]   # read at exec, even if short-lived
    assert grandchild["cmdline"] == "/bin/sh -c exit 5" and child["cmdline"] == root["cmdline"]
    assert killed["ppid"] == root["pid"] and killed["signal"] == 15 and killed["exit_code"] is None
    assert child["start_s"] <= grandchild["start_s"] <= grandchild["execs"][0]["at_s"] <= grandchild["exit_s"]
    assert grandchild["exit_s"] <= child["exit_s"] <= killed["start_s"] <= killed["exit_s"] <= root["exit_s"]
    assert root["syscalls"] > 100 and child["syscalls"] > 0 and grandchild["syscalls"] > 10
    table = subprocess.run([sys.executable, "-m", "forkguard", "trace", "-f", "--tree", "--backend", backend, "--",
                            sys.executable, "-S", str(script)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    drawn = table.stdout[table.stdout.index("process tree"):].splitlines()
    assert drawn[1].split()[0].isdigit() and "exit 0 at" in drawn[1]
    assert drawn[2].startswith("├─ ") and "exit 2 at" in drawn[2]
    assert drawn[3].startswith("│  └─ ") and "exit 5 at" in drawn[3] and " exec " in drawn[3]
    assert drawn[4].startswith("└─ ") and "killed by SIGTERM" in drawn[4]


def test_events_are_json_lines_at_the_sampling_rate(backend, workload):
    proc = subprocess.run([sys.executable, "-m", "forkguard", "trace", "--format", "json", "--backend", backend,
                           "--events", "--sample", "10", "--", *workload], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    events, report = lines[:-1], lines[-1]
    assert all(e["type"] == "event" and e["pid"] == report["pid"] and e["syscall"] and e["latency_ns"] >= 0
               for e in events)
    total = report["totals"]["count"]
    cpus = os.cpu_count() or 1
    # ptrace samples one counter; BPF keeps one per CPU, so up to (N-1) syscalls per CPU stay unsampled
    low = total // 10 if backend == "ptrace" else total // 10 - cpus
    assert low <= len(events) <= total // 10 and report["events_lost"] == 0
    assert sorted(e["at_s"] for e in events) == [e["at_s"] for e in events] or backend == "bpf"


def test_openmetrics_export_parses_and_is_replaced_atomically(backend, workload, tmp_path):
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    out = tmp_path / "metrics" / "forkguard.prom"
    out.parent.mkdir()
    trace(["-f", "--per-process", "--format", "openmetrics", "--output", str(out)], workload, backend=backend)
    families = {f.name: f for f in parser.text_string_to_metric_families(out.read_text())}
    calls = {s.labels["syscall"]: s.value for s in families["forkguard_trace_syscalls"].samples}
    assert calls["getppid"] == ROOT_GETPPID + CHILDREN * CHILD_GETPPID + EXEC_GETPPID
    assert calls["getsid"] == CHILDREN * CHILD_GETSID
    latency = [s for s in families["forkguard_trace_syscall_latency_seconds"].samples
               if s.labels["syscall"] == "getsid"]
    assert next(s.value for s in latency if s.name.endswith("_count")) == CHILDREN * CHILD_GETSID
    assert next(s.value for s in latency if s.labels.get("le") == "+Inf") == CHILDREN * CHILD_GETSID
    info = families["forkguard_trace_target"].samples[0]
    assert info.labels["backend"] == backend and info.labels["follow_forks"] == "true"
    assert families["forkguard_trace_processes_seen"].samples[0].value == 1 + CHILDREN + 1
    assert len(families["forkguard_trace_process_syscalls"].samples) == 1 + CHILDREN + 1
    assert os.listdir(out.parent) == ["forkguard.prom"] and oct(out.stat().st_mode & 0o777) == "0o644"
