"""At-fork hooks: order, unregister, weak bound methods, error isolation, strict mode, libc forks."""

from __future__ import annotations

import pytest
from conftest import FORK_HELPER, run_json, run_python


def test_hooks_run_by_priority_then_registration_and_before_in_reverse():
    out = run_json(FORK_HELPER + '''
import forkguard
calls = []
for name, prio in [("a", 0), ("b", 5), ("c", 0), ("d", -1)]:
    forkguard.register(
        before=lambda n=name: calls.append("before:" + n),
        after_in_parent=lambda n=name: calls.append("parent:" + n),
        after_in_child=lambda n=name: calls.append("child:" + n),
        priority=prio,
    )
child_calls = in_child(lambda: [c for c in calls if c.startswith("child:")])
print(json.dumps({"parent": calls, "child": child_calls}))
''')
    assert out["parent"] == ["before:d", "before:c", "before:a", "before:b",
                             "parent:b", "parent:a", "parent:c", "parent:d"]
    assert out["child"] == ["child:b", "child:a", "child:c", "child:d"]


def test_decorators_register_and_return_the_function():
    out = run_json(FORK_HELPER + '''
import forkguard
calls = []
@forkguard.before_fork
def b(): calls.append("before")
@forkguard.after_fork_in_parent
def p(): calls.append("parent")
@forkguard.after_fork_in_child
def c(): calls.append("child")
child = in_child(lambda: list(calls))
b()
print(json.dumps({"parent": calls, "child": child}))
''')
    assert out["child"] == ["before", "child"]
    assert out["parent"] == ["before", "parent", "before"]


def test_unregister_by_handle_and_by_callable():
    out = run_json(FORK_HELPER + '''
import forkguard
calls = []
def one(): calls.append("one")
def two(): calls.append("two")
def three(): calls.append("three")
handle = forkguard.register(after_in_child=one, after_in_parent=one)
assert handle.target("after_in_child") is one and handle.target("before") is None
assert forkguard.registered_hooks() == (handle,)
forkguard.register(after_in_child=two)
forkguard.register(after_in_child=three)
handle.unregister()
forkguard.unregister(three)
child = in_child(lambda: list(calls))
try:
    forkguard.unregister(three)
    error = None
except ValueError as exc:
    error = str(exc)
print(json.dumps({"child": child, "parent": calls, "error": error}))
''')
    assert out["child"] == ["two"]
    assert out["parent"] == []
    assert "three" in out["error"] and "not registered" in out["error"]


def test_bound_methods_are_held_weakly():
    out = run_json(FORK_HELPER + '''
import gc, weakref, forkguard
calls = []
class Client:
    def reset(self): calls.append("reset")
client = Client()
forkguard.register(after_in_child=client.reset)
ref = weakref.ref(client)
before = len(forkguard.registered_hooks())
first = in_child(lambda: list(calls))
del client
gc.collect()
second = in_child(lambda: list(calls))
print(json.dumps({"dead": ref() is None, "before": before, "after": len(forkguard.registered_hooks()),
                  "first": first, "second": second}))
''')
    assert out["dead"], "registering a bound method kept its object alive"
    assert out["first"] == ["reset"]
    assert out["second"] == []
    assert (out["before"], out["after"]) == (1, 0)


def test_unweakrefable_bound_method_is_refused_with_a_clear_error():
    proc = run_python('''
import forkguard
class Slotted:
    __slots__ = ()
    def hook(self): pass
forkguard.register(after_in_child=Slotted().hook)
''', check=False)
    assert proc.returncode != 0
    assert "cannot hold" in proc.stderr and "weak" in proc.stderr


def test_raising_hook_is_logged_counted_and_does_not_stop_the_others():
    out = run_json(FORK_HELPER + '''
import io, logging, forkguard
stream = io.StringIO()
logging.getLogger("forkguard").addHandler(logging.StreamHandler(stream))
calls = []
def bad(): raise RuntimeError("boom in hook")
forkguard.register(after_in_child=lambda: calls.append("first"))
forkguard.register(after_in_child=bad, after_in_parent=bad)
forkguard.register(after_in_child=lambda: calls.append("last"))
child = in_child(lambda: {"calls": list(calls), "errors": forkguard.fork_info().hook_errors,
                          "log": stream.getvalue()})
print(json.dumps({"child": child, "parent_errors": forkguard.fork_info().hook_errors}))
''')
    child = out["child"]
    assert child["calls"] == ["first", "last"]
    assert child["errors"] == 1
    assert "Traceback" in child["log"] and "boom in hook" in child["log"] and "bad" in child["log"]
    assert out["parent_errors"] == 1  # the after_in_parent call of bad


def test_strict_mode_propagates_a_hook_error():
    out = run_json(FORK_HELPER + '''
import ctypes, sys, forkguard
seen = []
sys.unraisablehook = lambda u: seen.append(repr(u.exc_value))
ran = []
forkguard.register(after_in_child=lambda: 1 / 0)
forkguard.register(after_in_child=lambda: ran.append("other"))
def libc_child():
    try:
        forkguard.check_fork()
    except ZeroDivisionError:
        return {"raised": True, "ran": ran}
    return {"raised": False, "ran": ran}
libc = in_child(libc_child, fork=ctypes.CDLL(None).fork)
python = in_child(lambda: {"unraisable": seen, "ran": ran})
print(json.dumps({"libc": libc, "python": python}))
''', env={"FORKGUARD_STRICT_HOOKS": "1"})
    assert out["libc"] == {"raised": True, "ran": ["other"]}
    assert any("ZeroDivisionError" in s for s in out["python"]["unraisable"])
    assert out["python"]["ran"] == ["other"]


@pytest.mark.parametrize("name, value, error", [
    ("FORKGUARD_STRICT_HOOKS", "maybe", "FORKGUARD_STRICT_HOOKS='maybe' is not a boolean: use 1 or 0"),
    ("FORKGUARD_FORK_DETECTION", "pidfd", "FORKGUARD_FORK_DETECTION='pidfd' is not one of auto, getpid"),
])
def test_bad_env_value_is_refused_in_one_line(name, value, error):
    proc = run_python("import forkguard", env={name: value}, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == f"ValueError: {error}"


@pytest.mark.parametrize("kwargs, error", [
    ("", "give at least one of"),
    ("after_in_child=42", "must be callable"),
    ("after_in_child=print, priority='high'", "priority must be an int"),
])
def test_register_rejects_bad_input_and_registers_nothing(kwargs, error):
    out = run_json(f'''
import json, forkguard
try:
    forkguard.register({kwargs})
    msg = None
except (TypeError, ValueError) as exc:
    msg = str(exc)
print(json.dumps({{"msg": msg, "hooks": len(forkguard.registered_hooks())}}))
''')
    assert error in out["msg"]
    assert out["hooks"] == 0


@pytest.mark.parametrize("detection", ["auto", "getpid"])
def test_libc_fork_through_ctypes_is_caught_by_check_fork_exactly_once(detection):
    out = run_json(FORK_HELPER + '''
import ctypes, forkguard
from forkguard import _process
calls = []
forkguard.register(after_in_child=lambda: calls.append(os.getpid()))
def body():
    before = list(calls)  # no Python hook ran: libc fork() bypasses them
    first = forkguard.check_fork()
    second = forkguard.check_fork()
    info = forkguard.fork_info()
    return {"before": before, "first": first, "second": second, "calls": calls, "pid": os.getpid(),
            "generation": info.generation, "detected_by": info.detected_by, "parent_pid": info.parent_pid}
child = in_child(body, fork=ctypes.CDLL(None).fork)
print(json.dumps({"child": child, "parent_pid": os.getpid(), "parent_check": forkguard.check_fork(),
                  "detection": _process.DETECTION}))
''', env={"FORKGUARD_FORK_DETECTION": detection})
    assert out["detection"] == {"auto": "madv_wipeonfork", "getpid": "getpid"}[detection]
    child = out["child"]
    assert child["before"] == []
    assert (child["first"], child["second"]) == (True, False)
    assert child["calls"] == [child["pid"]]
    assert child["generation"] == 1 and child["detected_by"] == "check_fork"
    assert child["parent_pid"] == out["parent_pid"]
    assert out["parent_check"] is False


def test_os_fork_child_hooks_do_not_run_again_on_check_fork():
    out = run_json(FORK_HELPER + '''
import forkguard
calls = []
forkguard.register(after_in_child=lambda: calls.append("child"))
print(json.dumps(in_child(lambda: [forkguard.check_fork(), forkguard.fork_info().detected_by, calls])))
''')
    assert out == [False, "os.fork", ["child"]]


@pytest.mark.parametrize("detection", ["auto", "getpid"])
def test_nested_forks_count_generations(detection):
    out = run_json(FORK_HELPER + '''
import ctypes, forkguard
def grandchild():
    info = forkguard.fork_info()
    return {"generation": info.generation, "parent_pid": info.parent_pid, "is_child": info.is_child}
def child():
    return {"me": os.getpid(), "gen": forkguard.fork_info().generation,
            "grandchild": in_child(grandchild), "libc_grandchild": in_child(grandchild, fork=ctypes.CDLL(None).fork)}
root = forkguard.fork_info()
print(json.dumps({"root": [root.generation, root.is_child, root.parent_pid], "child": in_child(child)}))
''', env={"FORKGUARD_FORK_DETECTION": detection})
    assert out["root"] == [0, False, None]
    child = out["child"]
    assert child["gen"] == 1
    for key in ("grandchild", "libc_grandchild"):
        assert child[key] == {"generation": 2, "parent_pid": child["me"], "is_child": True}


def test_import_starts_no_thread_and_imports_nothing_third_party():
    out = run_json('''
import json, sys, threading
before = set(sys.modules)
import forkguard
new = sorted(set(sys.modules) - before)
print(json.dumps({"threads": threading.active_count(), "new": new}))
''')
    assert out["threads"] == 1
    stdlib = set(__import__("sys").stdlib_module_names)
    third_party = [m for m in out["new"] if m.split(".")[0] not in stdlib and m.split(".")[0] != "forkguard"]
    assert third_party == []


@pytest.mark.parametrize("phase", ["before", "after_in_parent", "after_in_child"])
def test_a_hook_that_forks_runs_no_hook_for_its_own_fork_and_is_counted(phase):
    """Defect: a `before` hook that forked re-entered itself ~250 levels deep."""
    out = run_json(FORK_HELPER + f'''
import forkguard
calls = []
def forking_hook():
    calls.append("{phase}")
    pid = os.fork()                    # no forkguard hook may run for this one: it would recurse
    if pid == 0:
        os._exit(0 if forkguard.fork_info().generation >= 1 else 3)
    calls.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
forkguard.register(**{{"{phase}": forking_hook}})
child = in_child(lambda: [list(calls), forkguard.fork_info().nested_forks])
print(json.dumps({{"parent": calls, "child": child, "nested": forkguard.fork_info().nested_forks}}))
''')
    if phase == "after_in_child":
        assert out["child"] == [["after_in_child", 0], 1] and out["parent"] == []
    else:
        assert out["parent"] == [phase, 0] and out["nested"] == 1


def test_systemexit_or_keyboardinterrupt_from_a_hook_runs_the_rest_then_propagates():
    """Defect: a BaseException from one hook skipped every hook after it."""
    out = run_json('''
import json
import forkguard
from forkguard._hooks import registry
calls = []
def interrupt(): raise KeyboardInterrupt
forkguard.register(before=lambda: calls.append("first"), priority=1)   # before hooks: lowest priority first
forkguard.register(before=interrupt, priority=2)
forkguard.register(before=lambda: calls.append("last"), priority=3)
try:
    registry.run("before")
    raised = None
except KeyboardInterrupt:
    raised = "KeyboardInterrupt"
print(json.dumps({"calls": calls, "raised": raised, "errors": forkguard.fork_info().hook_errors}))
''')
    assert out == {"calls": ["first", "last"], "raised": "KeyboardInterrupt", "errors": 1}


def test_a_slow_hook_is_logged_with_its_name_and_time():
    proc = run_python(FORK_HELPER + '''
import time
import forkguard
def slow_reconnect(): time.sleep(0.3)
def quick(): pass
forkguard.register(after_in_child=slow_reconnect)
forkguard.register(after_in_child=quick)
in_child(lambda: None)
''', env={"FORKGUARD_SLOW_HOOK_SECONDS": "0.2"})
    lines = [line for line in proc.stderr.splitlines() if "took" in line]
    assert len(lines) == 1 and "after_in_child hook slow_reconnect took 0.3" in lines[0], proc.stderr


@pytest.mark.parametrize("flush", [True, False])
def test_stdout_and_stderr_are_flushed_before_a_fork_unless_turned_off(flush):
    """Defect: output buffered at the fork was written twice (by the parent and by the child at its exit)."""
    proc = run_python(f'''
import os, sys
import forkguard
forkguard.set_flush_stdio({flush})
print("pending", end="")               # stdout is a pipe: block-buffered
sys.stderr.write("err-pending")        # stderr is line-buffered: this waits for a newline
if os.fork() == 0:
    sys.exit(0)                        # a normal exit flushes whatever the child inherited
os.wait()
''', env={"PYTHONUNBUFFERED": ""})
    expected = 1 if flush else 2
    assert proc.stdout == "pending" * expected and proc.stderr == "err-pending" * expected
