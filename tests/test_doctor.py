"""forkguard doctor: the fork hazards of this process (Python API) and of another one (CLI, /proc)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, run_json


def test_doctor_reports_threads_held_locks_descriptors_and_forkguard_state():
    out = run_json('''
import json, socket, threading, forkguard
lock, held, done = forkguard.Lock(), threading.Event(), threading.Event()
def work():
    with lock:
        held.set(); done.wait()
t = threading.Thread(target=work, name="db-writer"); t.start(); held.wait()
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
listener.set_inheritable(True)
forkguard.track(listener, "close")
forkguard.register(after_in_child=print)
feature = forkguard.Feature("apm", late_fork="reset")
forkguard.set_fork_mode("warn")
report = forkguard.doctor()
done.set(); t.join()
print(json.dumps({"report": report, "fd": listener.fileno()}, default=str))
''')
    report, fd = out["report"], out["fd"]
    writer = [t for t in report["threads"] if t["name"] == "db-writer"]
    assert len(writer) == 1 and writer[0]["holds"] and writer[0]["holds"][0].startswith("forkguard.Lock")
    sock = next(d for d in report["descriptors"] if d["fd"] == fd)
    assert sock["kind"] == "socket" and sock["socket"]["state"] == "listening" and sock["cloexec"] is False
    assert report["tracked"][0]["policy"] == "close" and report["tracked"][0]["fd"] == fd
    assert any("print" in h for h in report["hooks"])
    assert report["features"] == [{"name": "apm", "enabled": True, "late_fork": "reset", "disabled_reason": None}]
    assert report["fork_mode"]["mode"] == "warn"
    hazards = "\n".join(report["hazards"])
    assert "2 threads" in hazards and "thread 'db-writer' holds forkguard.Lock" in hazards
    assert f"fd {fd} (socket listening) has no close-on-exec" in hazards


def test_doctor_cli_on_another_process_as_json_and_table():
    target = subprocess.Popen([sys.executable, "-c", """
import os, socket, threading, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
r, w = os.pipe(); os.set_inheritable(w, True)
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
print(s.fileno(), w, flush=True)
time.sleep(30)
"""], stdout=subprocess.PIPE, text=True)
    try:
        listen_fd, pipe_fd = map(int, target.stdout.readline().split())
        command = [sys.executable, "-m", "forkguard", "doctor", "-p", str(target.pid)]
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        report = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True,
                                           env=env).stdout)
        table = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    finally:
        target.kill()
        target.wait()
    assert report["pid"] == target.pid and report["own_process"] is False
    assert len(report["threads"]) == 2
    fds = {d["fd"]: d for d in report["descriptors"]}
    assert fds[listen_fd]["socket"]["state"] == "listening"
    assert fds[pipe_fd]["kind"] == "pipe" and fds[pipe_fd]["cloexec"] is False
    assert any(f"fd {pipe_fd} (pipe:" in h for h in report["hazards"])
    assert "threads" in table and "descriptors" in table and "hazards" in table
    assert "inet stream listening 127.0.0.1:" in table


def test_doctor_cli_refuses_a_missing_pid_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "forkguard", "doctor", "-p", "99999999"], capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "forkguard doctor: error: no process 99999999: check the pid (ps -ef, pgrep)"
