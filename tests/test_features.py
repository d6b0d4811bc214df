"""Contexts and features: early forks keep features, late forks (a context live anywhere) apply policy."""

from __future__ import annotations

import pytest
from conftest import FORK_HELPER, run_json, run_python

FEATURE = FORK_HELPER + '''
import forkguard
events = []
feature = forkguard.Feature("native", late_fork=POLICY,
                            on_early_fork=lambda: events.append("early"),
                            on_late_fork=lambda: events.append("late"))
def report():
    info = forkguard.fork_info()
    return {"enabled": feature.enabled, "kind": info.kind, "events": events,
            "live": info.live_contexts, "changes": [c._asdict() for c in info.feature_changes],
            "reason": feature.disabled_reason}
'''


def feature_script(policy: str = "disable") -> str:
    return FEATURE.replace("POLICY", repr(policy))


def test_early_fork_keeps_the_feature_and_runs_on_early_fork():
    out = run_json(feature_script() + '''
print(json.dumps({"child": in_child(report), "parent": feature.enabled}))
''')
    child = out["child"]
    assert child["enabled"] is True and child["kind"] == "early"
    assert child["events"] == ["early"]
    assert child["changes"] == [{"feature": "native", "action": "kept", "reason": "early fork"}]
    assert out["parent"] is True


def test_late_fork_inside_feature_context_disables_in_child_only():
    out = run_json(feature_script() + '''
with feature.context():
    child = in_child(report)
print(json.dumps({"child": child, "parent": feature.enabled, "parent_events": events}))
''')
    child = out["child"]
    assert child["enabled"] is False and child["kind"] == "late"
    assert child["events"] == ["late"]
    assert child["live"] == {"native": 1}
    assert "late fork" in child["reason"]
    assert out["parent"] is True and out["parent_events"] == []


def test_context_live_only_in_another_thread_makes_the_fork_late():
    out = run_json(feature_script() + '''
import threading
entered, release = threading.Event(), threading.Event()
def serve_request():
    with forkguard.active("request"):
        entered.set()
        release.wait()
t = threading.Thread(target=serve_request)
t.start()
entered.wait()
late = in_child(report)  # the forking (main) thread holds no context itself
release.set(); t.join()
early = in_child(report)
print(json.dumps({"late": late, "early": early}))
''')
    assert out["late"]["kind"] == "late" and out["late"]["enabled"] is False
    assert out["late"]["live"] == {"request": 1}
    assert out["early"]["kind"] == "early" and out["early"]["enabled"] is True


def test_context_live_in_a_suspended_asyncio_task_makes_the_fork_late():
    out = run_json(feature_script() + '''
import asyncio
async def handler(entered, release):
    with forkguard.active("request"):
        entered.set()
        await release.wait()   # suspended here while the fork happens
async def main():
    entered, release = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(handler(entered, release))
    await entered.wait()
    late = in_child(report)
    release.set(); await task
    return late, in_child(report)
late, early = asyncio.run(main())
print(json.dumps({"late": late, "early": early}))
''')
    assert out["late"]["kind"] == "late" and out["late"]["enabled"] is False
    assert out["late"]["live"] == {"request": 1}
    assert out["early"]["kind"] == "early"


@pytest.mark.parametrize("policy, enabled, events, action", [
    ("disable", False, ["late"], "disabled"),
    ("reset", True, ["late"], "reset"),
    ("keep", True, [], "kept"),
])
def test_late_fork_policies(policy, enabled, events, action):
    out = run_json(feature_script(policy) + '''
with forkguard.active("request"):
    print(json.dumps(in_child(report)))
''')
    assert out["enabled"] is enabled
    assert out["events"] == events
    assert out["changes"][0]["action"] == action


def test_reset_without_on_late_fork_reinitialises_with_on_early_fork():
    out = run_json(FORK_HELPER + '''
import forkguard
events = []
feature = forkguard.Feature("db", late_fork="reset", on_early_fork=lambda: events.append("fresh"))
with feature.context():
    print(json.dumps(in_child(lambda: [feature.enabled, events])))
''')
    assert out == [True, ["fresh"]]


def test_a_failing_fork_callback_disables_the_feature_and_says_why():
    out = run_json(FORK_HELPER + '''
import forkguard
def broken(): raise OSError("cannot reopen native handle")
feature = forkguard.Feature("apm", on_early_fork=broken)
print(json.dumps(in_child(lambda: [feature.enabled, feature.disabled_reason, forkguard.fork_info().hook_errors])))
''')
    enabled, reason, errors = out
    assert enabled is False
    assert "on_early_fork raised OSError: cannot reopen native handle" in reason
    assert errors == 1


def test_disabled_feature_stays_disabled_and_is_reenabled_only_explicitly():
    out = run_json(FORK_HELPER + '''
import forkguard
ran = []
feature = forkguard.Feature("x", on_early_fork=lambda: ran.append(1))
feature.disable("turned off by config")
child = in_child(lambda: [feature.enabled, feature.disabled_reason, ran,
                          forkguard.fork_info().feature_changes[0].action])
feature.enable()
print(json.dumps({"child": child, "parent": feature.enabled}))
''')
    assert out["child"] == [False, "turned off by config", [], "unchanged"]
    assert out["parent"] is True


def test_child_still_inside_the_forking_with_block_forks_late_then_early_after_leaving():
    out = run_json(FORK_HELPER + '''
import forkguard
with forkguard.active("job"):
    inside = in_child(lambda: [in_child(lambda: forkguard.fork_info().kind), forkguard.live_contexts()])
print(json.dumps({"inside": inside, "parent_after": forkguard.live_contexts()}))
''')
    # In the child the forking thread is still inside `with active("job")`: its own grandchild is late too.
    assert out["inside"] == ["late", {"job": 1}]
    assert out["parent_after"] == {}


def test_dead_threads_leave_no_live_context_and_are_forgotten():
    out = run_json('''
import json, threading, forkguard
from forkguard import _context
def work():
    with forkguard.active("request"):
        with forkguard.active("request"):
            pass
threads = [threading.Thread(target=work) for _ in range(50)]
for t in threads: t.start()
for t in threads: t.join()
import gc; gc.collect()
print(json.dumps({"live": forkguard.live_contexts(), "slots": len(_context._thread_counts)}))
''')
    assert out["live"] == {}
    assert out["slots"] <= 1  # the threads' counter lists were dropped with them


def test_live_contexts_counts_nesting_per_name():
    out = run_json('''
import json, forkguard
with forkguard.active("a"), forkguard.active("a"), forkguard.active("b"):
    inside = forkguard.live_contexts()
same = forkguard.active("a") is forkguard.active("a")
print(json.dumps({"inside": inside, "after": forkguard.live_contexts(), "same": same}))
''')
    assert out == {"inside": {"a": 2, "b": 1}, "after": {}, "same": True}


def test_debug_log_names_the_feature_and_the_fork_kind():
    out = run_json(FORK_HELPER + '''
import io, logging, forkguard
stream = io.StringIO()
handler = logging.StreamHandler(stream)
logger = logging.getLogger("forkguard"); logger.addHandler(handler); logger.setLevel(logging.DEBUG)
feature = forkguard.Feature("iast")
early = in_child(lambda: stream.getvalue())
with feature.context():
    late = in_child(lambda: stream.getvalue())
print(json.dumps([early, late]))
''')
    assert "no active context, keeping iast enabled (early fork)" in out[0]
    assert "active context detected (iast×1), disabling iast (late fork)" in out[1]


@pytest.mark.parametrize("args, error", [
    ("'x', late_fork='explode'", "late_fork='explode' is not a policy; use one of disable, reset, keep"),
    ("'x', on_early_fork=3", "on_early_fork must be callable or None"),
    ("''", "must not be empty"),
    ("42", "must be a str"),
])
def test_feature_rejects_bad_input(args, error):
    proc = run_python(f"import forkguard; forkguard.Feature({args})", check=False)
    assert proc.returncode != 0
    assert error in proc.stderr
    proc = run_python(f'''
import forkguard
try:
    forkguard.Feature({args})
except (TypeError, ValueError):
    pass
assert forkguard.features() == [], forkguard.features()
''')
