"""Fork modes with real forks: deny, warn and wait_for_exit_exec, through os.fork, multiprocessing and subprocess."""

from __future__ import annotations

import pytest
from conftest import FORK_HELPER, run_json, run_python


def test_deny_refuses_os_fork_forkpty_and_multiprocessing_fork_and_changes_nothing(tmp_path):
    # readme: fork modes / deny
    (tmp_path / "mpjob.py").write_text("def job(q):\n    q.put('ran')\n")
    out = run_json('''
import errno, json, multiprocessing, os, subprocess, sys
import forkguard
from forkguard._exitmode import child_pids
hooks = []
forkguard.register(before=lambda: hooks.append("before"), after_in_parent=lambda: hooks.append("parent"))
forkguard.set_fork_mode("deny")
results = {}
for name, call in [("os.fork", os.fork), ("os.forkpty", os.forkpty),
                   ("mp fork", lambda: multiprocessing.get_context("fork").Process(target=print).start())]:
    try:
        call()
        results[name] = "forked"
    except OSError as exc:
        results[name] = [exc.errno == errno.ENOTSUP, str(exc)]
results["children"] = child_pids()
results["hooks"] = list(hooks)
results["subprocess"] = subprocess.run([sys.executable, "-c", "print('exec ok')"], capture_output=True,
                                       text=True).stdout.strip()
import mpjob
for method in ("spawn", "forkserver"):   # fork+exec in C: not a Python fork
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue(); p = ctx.Process(target=mpjob.job, args=(q,)); p.start()
    results[method] = q.get(timeout=60); p.join()
forkguard.set_fork_mode("allow")
pid = os.fork()
if pid == 0:
    os._exit(0)
results["after_allow"] = os.waitpid(pid, 0)[1]
print(json.dumps(results))
''', cwd=tmp_path, timeout=120)
    for name in ("os.fork", "os.forkpty", "mp fork"):
        is_enotsup, message = out[name]
        assert is_enotsup, name
        assert "denied by forkguard (fork mode 'deny')" in message and "set_fork_mode('allow')" in message
    assert out["children"] == []      # no half-started child
    assert out["hooks"] == []         # a denied fork runs no hook
    assert out["subprocess"] == "exec ok"
    assert out["spawn"] == out["forkserver"] == "ran"
    assert out["after_allow"] == 0


def test_deny_exec_refuses_subprocess_posix_spawn_and_system_too():
    out = run_json('''
import errno, json, os, subprocess, sys
import forkguard
forkguard.set_fork_mode("deny", deny_exec=True)
results = {}
for name, call in [("subprocess", lambda: subprocess.run(["true"])),
                   ("posix_spawn", lambda: os.posix_spawn("/bin/true", ["true"], dict(os.environ))),
                   ("system", lambda: os.system("true"))]:
    try:
        call()
        results[name] = "ran"
    except OSError as exc:
        results[name] = exc.errno == errno.ENOTSUP
forkguard.set_fork_mode("allow")
results["restored"] = subprocess.run(["true"]).returncode
print(json.dumps(results))
''')
    assert out == {"subprocess": True, "posix_spawn": True, "system": True, "restored": 0}


def test_warn_logs_the_callers_stack_and_counts_each_fork():
    # readme: fork modes / warn
    proc = run_python(FORK_HELPER + '''
import multiprocessing
import forkguard
forkguard.set_fork_mode("warn")
def start_worker_pool():
    return in_child(lambda: forkguard.fork_info().fork_warnings)
child_count = start_worker_pool()
p = multiprocessing.get_context("fork").Process(target=int)
p.start(); p.join()
print(json.dumps({"child": child_count, "parent": forkguard.fork_info().fork_warnings}))
''')
    out = __import__("json").loads(proc.stdout.splitlines()[-1])
    assert out == {"child": 0, "parent": 2}
    assert "fork #1 of process" in proc.stderr and "fork #2 of process" in proc.stderr
    assert "in start_worker_pool" in proc.stderr          # the caller's stack, not forkguard's
    assert "popen_fork.py" in proc.stderr                 # multiprocessing's fork is seen too
    assert "forkguard/_" not in proc.stderr


def test_wait_for_exit_exec_returns_only_once_the_child_has_execd():
    # readme: fork modes / wait_for_exit_exec
    out = run_json('''
import json, os, time
import forkguard
ran = []
forkguard.register(after_in_child=lambda: os.write(2, b"child hook ran\\n"))
forkguard.set_fork_mode("wait_for_exit_exec")
start = time.monotonic()
pid = os.fork()
if pid == 0:
    time.sleep(0.5)                       # the parent must still be blocked in fork()
    os.execv("/bin/sleep", ["sleep", "30"])
returned_after = time.monotonic() - start
comm = open(f"/proc/{pid}/comm").read().strip()   # what the child is running as fork() returns
os.kill(pid, 9); os.waitpid(pid, 0)

start = time.monotonic()
pid = os.fork()
if pid == 0:
    time.sleep(0.3)
    os._exit(3)                            # exit counts like exec
exit_wait = time.monotonic() - start
state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
status = os.waitpid(pid, 0)[1]
print(json.dumps({"returned_after": returned_after, "comm": comm, "exit_wait": exit_wait,
                  "state": state, "status": os.waitstatus_to_exitcode(status)}))
''')
    assert out["returned_after"] >= 0.5
    assert out["comm"] == "sleep"           # the exec had happened before fork() returned
    assert out["exit_wait"] >= 0.3
    assert out["state"] == "Z" and out["status"] == 3


def test_wait_for_exit_exec_is_not_held_up_by_a_grandchild_and_child_hooks_still_run(tmp_path):
    marker = tmp_path / "hook"
    out = run_json(f'''
import json, os, time
import forkguard
forkguard.register(after_in_child=lambda: open({str(marker)!r}, "a").write(f"{{os.getpid()}}\\n"))
forkguard.set_fork_mode("wait_for_exit_exec")
start = time.monotonic()
pid = os.fork()
if pid == 0:
    forkguard.set_fork_mode("allow")
    if os.fork() == 0:                     # a grandchild that lives on, holding no pipe end
        time.sleep(5)
        os._exit(0)
    os.execv("/bin/true", ["true"])
waited = time.monotonic() - start
os.waitpid(pid, 0)
print(json.dumps({{"waited": waited, "child": pid}}))
''')
    assert out["waited"] < 3, "the parent waited for the grandchild"
    assert str(out["child"]) in marker.read_text().split()


def test_wait_for_exit_exec_with_multiprocessing_waits_for_the_child_to_finish(tmp_path):
    out = run_json('''
import json, multiprocessing, subprocess, time
import forkguard
forkguard.set_fork_mode("wait_for_exit_exec")
start = time.monotonic()
p = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0.5,))
p.start()                                  # a fork child that never execs: start() returns at its exit
started_after = time.monotonic() - start
p.join()
start = time.monotonic()
subprocess.run(["sleep", "0.2"])
print(json.dumps({"started_after": started_after, "exitcode": p.exitcode,
                  "subprocess": time.monotonic() - start}))
''')
    assert out["started_after"] >= 0.5 and out["exitcode"] == 0
    assert out["subprocess"] < 5


@pytest.mark.parametrize("on_timeout", ["warn", "kill"])
def test_wait_for_exit_exec_timeout(on_timeout):
    proc = run_python(f'''
import json, os, time
import forkguard
forkguard.set_fork_mode("wait_for_exit_exec", timeout=0.3, on_timeout={on_timeout!r})
start = time.monotonic()
try:
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    outcome = "returned"
    alive = os.path.exists(f"/proc/{{pid}}")
    os.kill(pid, 9); os.waitpid(pid, 0)
except TimeoutError as exc:
    outcome, alive = str(exc), None
from forkguard._exitmode import child_pids
print(json.dumps({{"outcome": outcome, "alive": alive, "seconds": time.monotonic() - start,
                  "children": child_pids()}}))
''')
    out = __import__("json").loads(proc.stdout.splitlines()[-1])
    assert 0.3 <= out["seconds"] < 5
    if on_timeout == "warn":
        assert out["outcome"] == "returned" and out["alive"] is True
        assert "has neither exec'd nor exited after 0.3 s" in proc.stderr
    else:
        assert "neither exec'd nor exited within 0.3 s" in out["outcome"] and "killed" in out["outcome"]
    assert out["children"] == []  # killed and reaped: no zombie


@pytest.mark.parametrize("call, error", [
    ("set_fork_mode('forbid')", "'forbid' is not a valid fork mode; use one of allow, warn, deny, wait_for_exit_exec"),
    ("set_fork_mode('wait_for_exit_exec', timeout=-1)", "timeout must be a finite number of seconds >= 0"),
    ("set_fork_mode('wait_for_exit_exec', on_timeout='explode')", "'explode' is not a valid on_timeout"),
    ("set_fork_mode('deny', timeout=3)", "timeout and on_timeout apply only to 'wait_for_exit_exec'"),
    ("set_fork_mode('warn', deny_exec=True)", "deny_exec applies only to 'deny'"),
    ("set_exit_mode('kill_everyone')", "'kill_everyone' is not a valid exit mode"),
    ("set_exit_mode('kill_children', grace='soon')", "grace must be a number of seconds, not str"),
    ("set_exit_mode('kill_children', descendants=True)", "descendants applies only to 'wait_for_children'"),
    ("set_exit_mode('none', pdeathsig=True)", "pdeathsig needs an exit mode"),
    ("set_exit_mode('kill_children', pdeathsig=999)", "pdeathsig 999 is not a signal number"),
])
def test_bad_modes_and_options_are_refused_with_one_line_and_change_nothing(call, error):
    out = run_json(f'''
import json, os, forkguard
forkguard.set_fork_mode("warn")
try:
    forkguard.{call}
    message = None
except (TypeError, ValueError) as exc:
    message = str(exc)
print(json.dumps({{"message": message, "fork": forkguard.fork_mode()["mode"], "exit": forkguard.exit_mode()["mode"],
                  "os_fork_untouched": os.fork.__module__ != "forkguard._policy"}}))
''')
    assert error in out["message"] and "\n" not in out["message"]
    assert (out["fork"], out["exit"], out["os_fork_untouched"]) == ("warn", "none", True)
