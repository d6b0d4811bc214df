"""Exit modes with real process trees, watched by a monitor that adopts orphans (child subreaper).

The parent under test forks children several ways, then exits normally, by an
exception, by SIGTERM or by SIGKILL. The monitor records what is left of the
children right after the parent is gone: with kill_children nothing, not even
a zombie; with exit mode "none" (the control) they all live on.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import run_json

PARENT = '''
import json, multiprocessing, os, signal, subprocess, sys, time
import forkguard
forkguard.set_exit_mode({mode!r}{options})
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        time.sleep(60); os._exit(0)
    pids.append(pid)
if {with_multiprocessing}:
    proc = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    proc.start(); pids.append(proc.pid)
if {with_subprocess}:
    pids.append(subprocess.Popen(["sleep", "60"]).pid)
pid = os.fork()
if pid == 0:                      # a child that ignores SIGTERM: only SIGKILL ends it
    signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60); os._exit(0)
pids.append(pid)
print(json.dumps(pids), flush=True)
action = {action!r}
if action == "exception":
    raise RuntimeError("the parent fails")
if action in ("sigterm", "sigint", "sigkill"):
    time.sleep(60)
'''

MONITOR = '''
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1)    # PR_SET_CHILD_SUBREAPER: orphans come to us
parent = subprocess.Popen([sys.executable, "-c", {parent!r}], stdout=subprocess.PIPE, text=True)
children = json.loads(parent.stdout.readline())
time.sleep(0.3)                    # let every child reach its sleep
action = {action!r}
if action in ("sigterm", "sigint"):
    parent.send_signal(signal.SIGTERM if action == "sigterm" else signal.SIGINT)
elif action == "sigkill":
    parent.kill()
started = time.monotonic()
returncode = parent.wait(timeout=60)
exit_seconds = time.monotonic() - started

def state(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None

right_after = {{pid: state(pid) for pid in children}}
deadline = time.monotonic() + 5    # a death signal needs a moment to land
while time.monotonic() < deadline and any(state(p) not in (None, "Z") for p in children):
    time.sleep(0.05)
settled = {{pid: state(pid) for pid in children}}
for pid in children:               # clean up whatever the parent left behind
    if state(pid) not in (None, "Z"):
        os.kill(pid, signal.SIGKILL)
while True:
    try:
        if os.waitpid(-1, 0)[0] == 0:
            break
    except ChildProcessError:
        break
print(json.dumps({{"returncode": returncode, "right_after": right_after, "settled": settled,
                  "exit_seconds": exit_seconds}}))
'''


def scenario(mode: str, action: str, options: str = "", with_subprocess: bool = True,
             with_multiprocessing: bool = True) -> dict:
    parent = textwrap.dedent(PARENT).format(mode=mode, options=options, action=action,
                                            with_subprocess=with_subprocess, with_multiprocessing=with_multiprocessing)
    return run_json(MONITOR.format(parent=parent, action=action), timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("action, returncode", [("normal", 0), ("exception", 1), ("sigterm", -15), ("sigint", -2)])
def test_kill_children_leaves_no_child_alive_and_no_zombie(action, returncode):
    out = scenario("kill_children", action, options=", grace=1.0")
    assert out["returncode"] == returncode
    # The parent killed and reaped every child before it was gone: no process, not even a zombie.
    assert set(out["right_after"].values()) == {None}, out
    assert out["exit_seconds"] < 10


@pytest.mark.slow
def test_exit_mode_none_leaves_the_children_running_control():
    # (no multiprocessing child: its own atexit handler would join it, for 60 s)
    out = scenario("none", "normal", with_multiprocessing=False)
    assert all(state not in (None, "Z") for state in out["right_after"].values()), out


@pytest.mark.slow
def test_kill_children_with_pdeathsig_covers_a_parent_killed_by_sigkill():
    out = scenario("kill_children", "sigkill", options=", grace=1.0, pdeathsig=True", with_subprocess=False)
    assert out["returncode"] == -9
    # No exit code of the parent ran; the kernel's death signal ended every child.
    assert all(state in (None, "Z") for state in out["settled"].values()), out


@pytest.mark.slow
def test_sigkill_without_pdeathsig_leaves_children_control():
    out = scenario("kill_children", "sigkill", options=", grace=1.0", with_subprocess=False)
    assert all(state not in (None, "Z") for state in out["settled"].values()), out


WAITER = '''
import json, os, sys, time
import forkguard
forkguard.set_exit_mode("wait_for_children"{options})
child = os.fork()
if child == 0:
    if os.fork() == 0:                 # grandchild, orphaned when the child exits
        time.sleep(1.0)
        open({marker!r}, "w").write(repr(time.time()))
        os._exit(0)
    time.sleep(0.2)
    os._exit(0)
'''


@pytest.mark.slow
@pytest.mark.parametrize("descendants", [True, False])
def test_wait_for_children_waits_for_grandchildren_only_as_a_subreaper(tmp_path, descendants):
    marker = tmp_path / "grandchild-finished"
    out = run_json(f'''
import json, subprocess, sys, time
code = {WAITER.format(options=", descendants=True" if descendants else "", marker=str(marker))!r}
start = time.time()
# No pipes: the grandchild inherits them, and reading to EOF would wait for it too.
proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, timeout=60)
exited = time.time()
time.sleep(1.5)                        # let an orphaned grandchild finish anyway
import os
finished = float(open({str(marker)!r}).read()) if os.path.exists({str(marker)!r}) else None
print(json.dumps({{"rc": proc.returncode, "exited": exited, "finished": finished, "start": start}}))
''', timeout=120)
    assert out["rc"] == 0 and out["finished"] is not None
    if descendants:
        assert out["exited"] >= out["finished"], "the parent exited before its grandchild"
    else:
        assert out["exited"] < out["finished"], "without descendants=True only children are waited for"


@pytest.mark.slow
def test_wait_for_children_timeout_falls_back_to_the_kill_path():
    out = run_json('''
import json, os, subprocess, sys, time
code = """
import os, time, forkguard
forkguard.set_exit_mode("wait_for_children", timeout=0.5, grace=0.5)
pid = os.fork()
if pid == 0:
    time.sleep(60); os._exit(0)
print(pid, flush=True)
"""
start = time.monotonic()
proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
seconds = time.monotonic() - start
child = int(proc.stdout.split()[0])
print(json.dumps({"rc": proc.returncode, "seconds": seconds, "child_left": os.path.exists(f"/proc/{child}")}))
''')
    assert out["rc"] == 0
    assert 0.5 <= out["seconds"] < 10
    assert out["child_left"] is False


def test_kill_children_runs_before_multiprocessing_joins_its_children():
    # multiprocessing's atexit handler joins non-daemon children; imported after
    # set_exit_mode it would run first and wait for a child that never ends.
    out = run_json('''
import json, subprocess, sys, time
code = """
import forkguard
forkguard.set_exit_mode("kill_children", grace=0.5)
import multiprocessing, time
multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,)).start()
"""
start = time.monotonic()
proc = subprocess.run([sys.executable, "-c", code], timeout=60)
print(json.dumps({"rc": proc.returncode, "seconds": time.monotonic() - start}))
''', timeout=90)
    assert out["rc"] == 0 and out["seconds"] < 10


def test_exit_mode_from_the_environment_and_bad_values_refused():
    out = run_json('''
import json, forkguard
print(json.dumps(forkguard.exit_mode()))
''', env={"FORKGUARD_EXIT_MODE": "kill_children", "FORKGUARD_EXIT_GRACE": "2.5", "FORKGUARD_PDEATHSIG": "15"})
    assert out == {"mode": "kill_children", "grace": 2.5, "timeout": None, "descendants": False, "pdeathsig": 15}
    from conftest import run_python
    proc = run_python("import forkguard", env={"FORKGUARD_EXIT_MODE": "kill_children", "FORKGUARD_EXIT_GRACE": "-1"},
                      check=False)
    assert proc.returncode != 0
    assert "FORKGUARD_EXIT_GRACE='-1': not a finite number of seconds >= 0" in proc.stderr.splitlines()[-1]
    assert json
