"""Exit modes with real process trees, watched by a monitor that adopts orphans (child subreaper).

The parent under test forks children several ways, then exits normally, by an
exception, by SIGTERM or by SIGKILL. The monitor records what is left of the
children right after the parent is gone: with kill_children nothing, not even
a zombie; with exit mode "none" (the control) they all live on.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import pytest
from conftest import compile_shared, run_json

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

# The parent prints a JSON list of pids on its first line, and may print more
# lists later (children forked at exit); the monitor judges all of them.
MONITOR = '''
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1)    # PR_SET_CHILD_SUBREAPER: orphans come to us
parent = subprocess.Popen([*{prefix!r}, sys.executable, "-c", {parent!r}], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
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
def written(stream):                # what the parent wrote; live children still hold the pipe open
    os.set_blocking(stream.fileno(), False)
    data = b""
    while True:
        try:
            chunk = os.read(stream.fileno(), 65536)
        except BlockingIOError:
            return data.decode()
        if not chunk:
            return data.decode()
        data += chunk

children += [pid for line in written(parent.stdout).splitlines() if line.strip() for pid in json.loads(line)]
stderr = written(parent.stderr)

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
                  "exit_seconds": exit_seconds, "stderr": stderr}}))
'''


def scenario(mode: str, action: str, options: str = "", with_subprocess: bool = True,
             with_multiprocessing: bool = True) -> dict:
    parent = PARENT.format(mode=mode, options=options, action=action,
                           with_subprocess=with_subprocess, with_multiprocessing=with_multiprocessing)
    return watch(parent, action)


def watch(parent: str, action: str = "normal", prefix: tuple[str, ...] = ()) -> dict:
    """Run ``parent`` under the monitor; return its exit and the state of every child it reported."""
    return run_json(MONITOR.format(parent=textwrap.dedent(parent), action=action, prefix=list(prefix)), timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("action, returncode", [("normal", 0), ("exception", 1), ("sigterm", -15), ("sigint", -2)])
def test_kill_children_leaves_no_child_alive_and_no_zombie(action, returncode):
    # readme: exit modes / kill_children
    out = scenario("kill_children", action, options=", grace=1.0")
    assert out["returncode"] == returncode
    # The parent killed and reaped every child before it was gone: no process, not even a zombie.
    assert set(out["right_after"].values()) == {None}, out
    assert out["exit_seconds"] < 10


@pytest.mark.slow
def test_exit_mode_none_leaves_the_children_running_control():
    # readme: exit modes / none
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
    # readme: exit modes / wait_for_children
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


STUCK_IN_C = """
#include <pthread.h>
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
void stuck(void) { pthread_mutex_lock(&mutex); pthread_mutex_lock(&mutex); }  /* waits for itself forever */
"""


@pytest.mark.parametrize("how", ["os.fork + kill", "non-main thread fork + kill", "libc fork + kill",
                                 "Process.terminate", "Pool.terminate"])
def test_kill_children_leaves_sigterm_deadly_in_a_child_stuck_in_c(tmp_path, how):
    """Defect: the parent's Python SIGTERM handler, inherited, never runs in a child stuck in C."""
    lib = compile_shared(STUCK_IN_C, tmp_path, "stuck")
    out = run_json(f"""
import ctypes, json, multiprocessing, os, signal, threading, time
import forkguard
forkguard.set_exit_mode("kill_children", grace=1)
lib = ctypes.CDLL({str(lib)!r})
how = {how!r}
def child_body():
    forkguard.check_fork()             # a libc-forked child settles at forkguard's first use
    lib.stuck()
if how == "Process.terminate":
    proc = multiprocessing.get_context("fork").Process(target=child_body); proc.start()
    time.sleep(0.5); started = time.monotonic(); proc.terminate(); proc.join(10)
    print(json.dumps({{"exitcode": proc.exitcode, "seconds": time.monotonic() - started}})); raise SystemExit
if how == "Pool.terminate":
    pool = multiprocessing.get_context("fork").Pool(2)
    workers = [p.pid for p in pool._pool]
    results = [pool.apply_async(child_body) for _ in range(2)]
    time.sleep(0.5)
    stuck = [r.ready() for r in results] == [False, False]   # both workers are inside stuck()
    started = time.monotonic(); pool.terminate(); pool.join()
    gone = all(not os.path.exists(f"/proc/{{pid}}") for pid in workers)
    print(json.dumps({{"exitcode": -15 if gone and stuck else None, "seconds": time.monotonic() - started}}))
    raise SystemExit
box = []
def fork():
    pid = (ctypes.PyDLL(None).fork if how.startswith("libc") else os.fork)()
    if pid == 0:
        child_body()
    box.append(pid)
if how.startswith("non-main"):
    t = threading.Thread(target=fork); t.start(); t.join()
else:
    fork()
time.sleep(0.5)
started = time.monotonic()
os.kill(box[0], signal.SIGTERM)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    pid, status = os.waitpid(box[0], os.WNOHANG)
    if pid:
        break
    time.sleep(0.02)
else:
    os.kill(box[0], signal.SIGKILL); os.waitpid(box[0], 0); status = None
print(json.dumps({{"exitcode": -os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else status,
                  "seconds": time.monotonic() - started}}))
""", timeout=90)
    assert out["exitcode"] == -15, f"{how}: the child stuck in C did not die of SIGTERM: {out}"
    assert out["seconds"] < 5


GRANDCHILDREN = """
import json, os, signal, time
import forkguard
forkguard.set_exit_mode({mode!r}{options})
pids = []
for ignores_term in (False, True):
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        grandchild = os.fork()
        if grandchild == 0:
            if ignores_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60); os._exit(0)
        os.write(w, str(grandchild).encode()); os.close(w)
        if ignores_term:
            signal.signal(signal.SIGTERM, lambda *a: None)   # its own handler: it survives SIGTERM
        time.sleep(60); os._exit(0)
    os.close(w)
    pids += [child, int(os.read(r, 64))]
print(json.dumps(pids), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode, options", [("kill_children", ", grace=0.5"),
                                           ("wait_for_children", ", descendants=True, timeout=0.5, grace=0.5"),
                                           ("wait_for_children", ", timeout=0.5, grace=0.5")])
def test_exit_mode_leaves_no_grandchild_alive(mode, options):
    """Defect: grandchildren inherited the handler and waited instead of dying; they outlived the parent."""
    out = watch(GRANDCHILDREN.format(mode=mode, options=options))
    assert out["returncode"] == 0
    assert set(out["right_after"].values()) <= {None, "Z"} and set(out["settled"].values()) == {None}, out
    assert out["exit_seconds"] < 15


AT_EXIT_FORK = """
import atexit, json, os, subprocess, sys, time
import forkguard
def fork_at_exit():                    # registered before the exit mode: atexit runs it after ours
    pids = []
    try:
        pid = os.fork()                # CPython 3.12 refuses os.fork() at exit; 3.10, 3.11 and 3.13 allow it
        if pid == 0:
            time.sleep(60); os._exit(0)
        pids.append(pid)
    except RuntimeError:
        pass
    pids.append(subprocess.Popen(["sleep", "60"]).pid)
    print(json.dumps(pids), flush=True)
atexit.register(fork_at_exit)
forkguard.set_exit_mode("kill_children", grace=0.5)
print(json.dumps([]), flush=True)
"""


@pytest.mark.slow
def test_children_forked_by_an_earlier_atexit_handler_are_killed_too():
    out = watch(AT_EXIT_FORK)
    assert out["returncode"] == 0 and len(out["right_after"]) >= 1, out
    assert set(out["right_after"].values()) == {None}, out


BLIND_PARENT = """
import json, os, resource, subprocess, time
import forkguard
forkguard.set_exit_mode("kill_children", grace=0.5)
pid = os.fork()
if pid == 0:
    time.sleep(60); os._exit(0)
sleeper = subprocess.Popen(["sleep", "60"])
print(json.dumps([pid, sleeper.pid]), flush=True)
if {exhaust!r}:                        # no descriptor left at exit
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    hoard = []
    try:
        while True:
            hoard.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
"""


@pytest.mark.slow
@pytest.mark.parametrize("blind", ["no /proc", "no descriptor left"])
def test_exit_mode_kills_children_it_cannot_see_in_proc_and_says_so(blind):
    prefix: tuple[str, ...] = ()
    if blind == "no /proc":
        if os.geteuid() != 0 or not shutil.which("unshare"):
            pytest.fail("needs root and unshare (util-linux): CI has both")
        prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", 'umount -l /proc && exec "$@"', "sh")
    out = watch(BLIND_PARENT.format(exhaust=blind == "no descriptor left"), prefix=prefix)
    assert out["returncode"] == 0, out
    assert set(out["right_after"].values()) == {None}, out  # the children it forked itself: recorded, killed
    assert "cannot list children in /proc" in out["stderr"], out["stderr"]
