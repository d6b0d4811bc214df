"""Fork-safe primitives, ForkLocal and Service, with real forks (os.fork, multiprocessing, libc fork)."""

from __future__ import annotations

import pytest
from conftest import FORK_HELPER, run_json, run_python

HELD_BY_ANOTHER_THREAD = FORK_HELPER + '''
import threading, time, ctypes
import forkguard
held, done = threading.Event(), threading.Event()
def hold(lock):
    with lock:
        held.set()
        done.wait()
def check(lock, fork=os.fork):
    held.clear(); done.clear()
    t = threading.Thread(target=hold, args=(lock,)); t.start(); held.wait()
    free_in_child = in_child(lambda: [lock.acquire(timeout=0.5), lock.release() if False else None][0], fork=fork)
    done.set(); t.join()
    return free_in_child
'''


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore"])
def test_primitive_held_by_another_thread_at_the_fork_is_free_in_the_child(kind):
    out = run_json(HELD_BY_ANOTHER_THREAD + f'''
print(json.dumps({{"forkguard": check(forkguard.{kind}()), "threading_control": check(threading.{kind}()),
                  "libc_fork": check(forkguard.{kind}(), fork=ctypes.PyDLL(None).fork)}}))
''')
    assert out == {"forkguard": True, "threading_control": False, "libc_fork": True}


@pytest.mark.parametrize("kind, depth", [("Lock", 1), ("RLock", 2)])
def test_lock_held_by_the_forking_thread_stays_held_and_releases_in_the_child(kind, depth):
    out = run_json(FORK_HELPER + f'''
import forkguard
lock = forkguard.{kind}()
for _ in range({depth}):
    lock.acquire()
def child():
    held = not lock.acquire(blocking=False) if {kind!r} == "Lock" else lock._is_owned()
    for _ in range({depth}):
        lock.release()               # the `with` blocks the child inherited still close cleanly
    return [held, lock.acquire(blocking=False)]
print(json.dumps(in_child(child)))
''')
    assert out == [True, True]


def test_condition_and_event_work_in_the_child_after_a_thread_waited_in_the_parent():
    out = run_json(FORK_HELPER + '''
import threading, time
import forkguard
cond, event, flag = forkguard.Condition(), forkguard.Event(), forkguard.Event()
flag.set()
waiting = threading.Thread(target=lambda: (cond.acquire(), cond.wait(5), cond.release()))
waiting.start(); time.sleep(0.1)       # a parent thread waits on the condition at the fork
def child():
    box = []
    def notifier():
        time.sleep(0.1)
        with cond:
            box.append(1); cond.notify_all()
        event.set()
    threading.Thread(target=notifier).start()
    with cond:
        got = cond.wait_for(lambda: box, timeout=5)
    return [bool(got), event.wait(5), flag.is_set()]
result = in_child(child)
with cond:
    cond.notify_all()
waiting.join()
print(json.dumps(result))
''')
    assert out == [True, True, True]


def test_rlock_condition_wait_releases_every_level():
    out = run_json('''
import json, threading, forkguard
cond = forkguard.Condition(forkguard.RLock())
ready = []
def other():
    with cond:
        ready.append(1); cond.notify()
with cond, cond:                     # two levels: wait() must release both, or `other` never gets in
    threading.Thread(target=other).start()
    ok = cond.wait_for(lambda: ready, timeout=5)
print(json.dumps(bool(ok)))
''')
    assert out is True


def test_forklocal_is_made_once_per_process_and_never_closes_the_parents_value(tmp_path):
    (tmp_path / "flapp.py").write_text('''
import os, forkguard
made, closed = [], []
class Conn:
    def __init__(self): self.pid = os.getpid(); made.append(self.pid)
conn = forkguard.ForkLocal(Conn, close=lambda c: closed.append((os.getpid(), c.pid)))
def report(q=None):
    first = conn.get()
    out = {"pid": os.getpid(), "value_pid": first.pid, "same": first is conn.get(), "made": list(made),
           "closed": list(closed)}
    if q is not None:
        q.put(out)
    return out
''')
    out = run_json(FORK_HELPER + '''
import ctypes, multiprocessing
import flapp
parent = flapp.report()
forked = in_child(flapp.report)
libc = in_child(flapp.report, fork=ctypes.CDLL(None).fork)
q = multiprocessing.get_context("fork").Queue()
p = multiprocessing.get_context("fork").Process(target=flapp.report, args=(q,)); p.start()
mp = q.get(timeout=30); p.join()
flapp.conn.reset()
after_reset = flapp.conn.get().pid, flapp.closed, flapp.made
print(json.dumps({"parent": parent, "forked": forked, "libc": libc, "mp": mp, "after_reset": after_reset}))
''', cwd=tmp_path)
    for key in ("parent", "forked", "libc", "mp"):
        child = out[key]
        assert child["value_pid"] == child["pid"] and child["same"], key
        assert child["closed"] == [], f"{key}: the parent's value was closed"
    parent_pid = out["parent"]["pid"]
    for key in ("forked", "libc", "mp"):
        assert out[key]["made"] == [parent_pid, out[key]["pid"]], key
    value_pid, closed, made = out["after_reset"]
    assert closed == [[parent_pid, parent_pid]] and value_pid == parent_pid and made == [parent_pid, parent_pid]


def test_service_restarts_in_children_and_stops_cleanly_at_exit(tmp_path):
    log = tmp_path / "service.log"
    out = run_json(FORK_HELPER + f'''
import ctypes, time
import forkguard
def tick():
    with open({str(log)!r}, "a") as f:
        f.write(f"tick {{os.getpid()}}\\n")
def long_running(stopping):
    stopping.wait()
    with open({str(log)!r}, "a") as f:
        f.write(f"stopped cleanly {{os.getpid()}}\\n")
ticker = forkguard.Service(tick, interval=0.05)
worker = forkguard.Service(long_running)
ticker.start(); worker.start()
def child():
    forkguard.check_fork()         # a libc fork is seen at forkguard's first use (or by the signal trigger)
    time.sleep(0.3)
    return [os.getpid(), ticker.running, worker.running]
forked = in_child(child)
libc = in_child(child, fork=ctypes.PyDLL(None).fork)
print(json.dumps({{"parent": os.getpid(), "forked": forked, "libc": libc}}))
''')
    text = log.read_text()
    for key in ("forked", "libc"):
        pid, ticking, working = out[key]
        assert ticking and working, key
        assert f"tick {pid}\n" in text, f"{key}: the service did not run in the child"
    assert f"stopped cleanly {out['parent']}\n" in text  # stopped and joined at interpreter exit


@pytest.mark.parametrize("code, error", [
    ("forkguard.Semaphore(-1)", "value must be >= 0"),
    ("forkguard.ForkLocal(3)", "factory must be callable"),
    ("forkguard.ForkLocal(list, close=1)", "close must be callable or None"),
    ("forkguard.Service(print, interval=0)", "interval must be a finite number of seconds > 0"),
    ("forkguard.Service(None)", "target must be callable"),
])
def test_primitives_reject_bad_input(code, error):
    proc = run_python(f"import forkguard; {code}", check=False)
    assert proc.returncode != 0 and error in proc.stderr.strip().splitlines()[-1]
