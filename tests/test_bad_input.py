"""Every public API function and CLI option, fed its bad values: one line, a specific error, nothing changed.

API rows run in a fresh interpreter each (its policy state, hooks, tracked
objects and signal handlers compared before and after the call); CLI rows run
the command and check stderr is exactly one line naming the option, exit
status 2, and that no file appeared and no process was left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from conftest import run_json

HUGE = 2**63
NUMBERS = {"negative": -1, "inf": math.inf, "nan": math.nan, "huge int": 2**1024, "str": "5", "bool": True,
           "none": None}


@dataclass(frozen=True)
class ApiCase:
    """``call`` (Python source, forkguard imported) must raise ``error`` whose message contains ``says``."""

    call: str
    error: str
    says: str

    @property
    def id(self) -> str:
        return self.call


def seconds_cases(template: str, what: str, positive: bool = False, none_ok: bool = False) -> list[ApiCase]:
    """Every bad number of seconds put into ``template``'s ``{}`` (None too, unless it means "none")."""
    cases = []
    for label, value in NUMBERS.items():
        if label == "none" and none_ok:
            continue
        error = "TypeError" if label in ("str", "bool", "none") else "ValueError"
        cases.append(ApiCase(template.format(repr(value) if label not in ("inf", "nan") else f"float({label!r})"),
                             error, what))
    if positive:
        cases.append(ApiCase(template.format("0"), "ValueError", what))
    return cases


API_CASES: list[ApiCase] = [
    # fork modes
    *[ApiCase(f"forkguard.set_fork_mode({v!r})", "ValueError", "is not a valid fork mode")
      for v in ("forbid", "", "DENY", "²", 1, None, ["deny"])],
    *seconds_cases("forkguard.set_fork_mode('wait_for_exit_exec', timeout={})", "timeout", none_ok=True),
    *[ApiCase(f"forkguard.set_fork_mode('wait_for_exit_exec', on_timeout={v!r})", "ValueError", "on_timeout")
      for v in ("explode", "", 1)],
    *[ApiCase(f"forkguard.set_fork_mode('deny', deny_exec={v!r})", "TypeError", "deny_exec must be True or False")
      for v in (1, "yes", None)],
    ApiCase("forkguard.set_fork_mode('warn', deny_exec=True)", "ValueError", "deny_exec applies only to 'deny'"),
    ApiCase("forkguard.set_fork_mode('deny', timeout=3)", "ValueError", "apply only to 'wait_for_exit_exec'"),
    # exit modes
    *[ApiCase(f"forkguard.set_exit_mode({v!r})", "ValueError", "is not a valid exit mode")
      for v in ("kill_everyone", "", "²", 0, None)],
    *seconds_cases("forkguard.set_exit_mode('kill_children', grace={})", "grace"),
    *seconds_cases("forkguard.set_exit_mode('wait_for_children', timeout={})", "timeout", none_ok=True),
    *[ApiCase(f"forkguard.set_exit_mode('wait_for_children', descendants={v!r})", "TypeError",
              "descendants must be True or False") for v in (1, "yes", None)],
    ApiCase("forkguard.set_exit_mode('kill_children', descendants=True)", "ValueError", "only to 'wait_for_children'"),
    ApiCase("forkguard.set_exit_mode('kill_children', timeout=3)", "ValueError", "only to 'wait_for_children'"),
    ApiCase("forkguard.set_exit_mode('none', pdeathsig=True)", "ValueError", "pdeathsig needs an exit mode"),
    *[ApiCase(f"forkguard.set_exit_mode('kill_children', pdeathsig={v})", "ValueError", says)
      for v, says in (("999", "is not a signal number"), ("-1", "is not a signal number"),
                      (str(HUGE), "is not a signal number"), ("signal.SIGSTOP", "SIGSTOP does not end a process"),
                      ("signal.SIGCHLD", "SIGCHLD does not end a process"),
                      ("signal.SIGTSTP", "SIGTSTP does not end a process"),
                      ("signal.SIGCONT", "SIGCONT does not end a process"))],
    *[ApiCase(f"forkguard.set_exit_mode('kill_children', pdeathsig={v!r})", "TypeError", "pdeathsig must be")
      for v in ("9", 9.0, None)],
    # contexts and features
    *[ApiCase(f"forkguard.active({v!r})", error, says)
      for v, error, says in (("", "ValueError", "must not be empty"), (1, "TypeError", "must be a str"),
                             (None, "TypeError", "must be a str"), (b"req", "TypeError", "must be a str"))],
    ApiCase("forkguard.Feature('')", "ValueError", "must not be empty"),
    ApiCase("forkguard.Feature(7)", "TypeError", "must be a str"),
    *[ApiCase(f"forkguard.Feature('f', late_fork={v!r})", "ValueError", "is not a policy")
      for v in ("explode", "", None, 1)],
    *[ApiCase(f"forkguard.Feature('f', {arg}=1)", "TypeError", f"{arg} must be callable or None")
      for arg in ("on_early_fork", "on_late_fork")],
    *[ApiCase(f"forkguard.Feature('f', enabled={v!r})", "TypeError", "enabled must be True or False")
      for v in ("no", 1, None)],
    ApiCase("forkguard.Feature('f').disable(3)", "TypeError", "reason must be a str"),
    # hooks
    ApiCase("forkguard.register()", "ValueError", "give at least one of"),
    *[ApiCase(f"forkguard.register({phase}=1)", "TypeError", f"{phase}= must be callable")
      for phase in ("before", "after_in_parent", "after_in_child")],
    *[ApiCase(f"forkguard.register(before=print, priority={v!r})", "TypeError", "priority must be an int")
      for v in ("1", 1.5, True, None)],
    ApiCase("forkguard.unregister(print)", "ValueError", "is not registered"),
    *[ApiCase(f"forkguard.{decorator}(1)", "TypeError", "must be callable")
      for decorator in ("before_fork", "after_fork_in_parent", "after_fork_in_child")],
    *[ApiCase(f"forkguard.set_flush_stdio({v!r})", "TypeError", "enabled must be True or False")
      for v in ("yes", 1, None)],
    # inherited resources
    *[ApiCase(f"forkguard.track({v})", error, says)
      for v, error, says in ((str(2**70), "ValueError", "not a file descriptor number"),
                             ("-1", "ValueError", "not a file descriptor number"),
                             (str(HUGE), "ValueError", "not a file descriptor number"),
                             ("987", "ValueError", "has no open descriptor"),
                             ("'x'", "TypeError", "cannot track str"), ("None", "TypeError", "cannot track NoneType"),
                             ("3.5", "TypeError", "cannot track float"), ("True", "TypeError", "cannot track bool"))],
    *[ApiCase(f"forkguard.track(sys.stderr, {v!r})", "ValueError", "is not a policy")
      for v in ("bogus", "", "REOPEN")],
    ApiCase("forkguard.track(sys.stderr, reconnect=1)", "TypeError", "reconnect must be callable"),
    ApiCase("forkguard.track(sys.stderr, reconnect=print)", "ValueError", "reconnect applies to sockets"),
    ApiCase("forkguard.track(sys.stderr, 'keep')", "ValueError", "keep applies to sockets"),
    ApiCase("forkguard.track(socket.socket(), 'reopen')", "ValueError", "a socket cannot be reopened"),
    ApiCase("forkguard.untrack(sys.stderr)", "ValueError", "is not tracked"),
    *[ApiCase(f"forkguard.set_inherit_preset({v!r})", "ValueError", "is not a preset") for v in ("x", "", 1)],
    *[ApiCase(f"forkguard.{fn}({v!r})", error, "pid must be")
      for fn in ("inherited", "doctor")
      for v, error in (("x", "TypeError"), (0, "ValueError"), (-5, "ValueError"), (HUGE, "ValueError"),
                       (True, "TypeError"), (1.5, "TypeError"))],
    # the signal trigger
    *[ApiCase(f"forkguard.{fn}({v!r})", error, says)
      for fn in ("install_signal_trigger", "uninstall_signal_trigger")
      for v, error, says in ((0, "ValueError", "is not a signal a handler can catch"),
                             (-1, "ValueError", "is not a signal a handler can catch"),
                             (9, "ValueError", "is not a signal a handler can catch"),
                             (19, "ValueError", "is not a signal a handler can catch"),
                             (HUGE, "ValueError", "is not a signal a handler can catch"),
                             ("x", "TypeError", "signum must be a signal number"),
                             (10.5, "TypeError", "signum must be a signal number"))],
    # primitives
    *[ApiCase(f"forkguard.Condition({v})", "TypeError", "lock must be a forkguard.Lock or forkguard.RLock")
      for v in ("5", "threading.Lock()", "'lock'")],
    *[ApiCase(f"forkguard.{kind}({v!r})", error, says)
      for kind in ("Semaphore", "BoundedSemaphore")
      for v, error, says in ((-1, "ValueError", "value must be >= 0"), ("3", "TypeError", "value must be an int"),
                             (2.5, "TypeError", "value must be an int"), (True, "TypeError", "value must be an int"),
                             (None, "TypeError", "value must be an int"))],
    ApiCase("forkguard.ForkLocal(3)", "TypeError", "factory must be callable"),
    ApiCase("forkguard.ForkLocal(list, close=1)", "TypeError", "close must be callable or None"),
    ApiCase("forkguard.Service(None)", "TypeError", "target must be callable"),
    *seconds_cases("forkguard.Service(print, interval={})", "interval", positive=True, none_ok=True),
    *seconds_cases("forkguard.Service(print, stop_timeout={})", "stop_timeout"),
    ApiCase("forkguard.Service(print, name=5)", "TypeError", "name must be a str or None"),
]

# What a bad call must leave as it was.
STATE = '''
import signal, sys
import forkguard
from forkguard import _hooks, _resources
def state():
    return {"fork": forkguard.fork_mode(), "exit": forkguard.exit_mode(),
            "hooks": len(_hooks.registry.hooks()), "tracked": len(forkguard.tracked()),
            "features": len(forkguard.features()), "preset": _resources._state.preset,
            "sigterm": repr(signal.getsignal(signal.SIGTERM)), "sigusr2": repr(signal.getsignal(signal.SIGUSR2)),
            "os_fork": getattr(__import__("os").fork, "_forkguard_wraps", None)}
'''


def run_api_cases(cases: list[ApiCase]) -> list[dict]:
    """Run each case in one fresh interpreter, state compared around every call."""
    source = STATE + f'''
import json, math, os, socket, threading, traceback
results = []
for call in {[c.call for c in cases]!r}:
    before = state()
    try:
        eval(call)
        outcome = {{"error": None}}
    except Exception as exc:
        outcome = {{"error": type(exc).__name__, "message": str(exc)}}
    outcome["unchanged"] = state() == before
    results.append(outcome)
print(json.dumps(results))
'''
    return run_json(source, timeout=120)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def api_results() -> dict[str, dict]:
    return dict(zip([c.call for c in API_CASES], run_api_cases(API_CASES), strict=True))


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_value_raises_one_line_and_changes_nothing(case, api_results):
    out = api_results[case.call]
    assert out["error"] == case.error, out
    assert case.says in out["message"] and "\n" not in out["message"], out
    assert out["unchanged"], f"{case.call} changed state before failing"


def test_the_table_covers_every_public_runtime_function():
    import forkguard

    results = {"ActiveContext", "FdInfo", "FeatureChange", "ForkInfo", "Hook", "Tracked"}  # returned, not called
    no_arguments = {"check_fork", "fork_info", "fork_mode", "exit_mode", "features", "live_contexts", "tracked",
                    "registered_hooks", "Lock", "RLock", "Event"}
    public = {name for name in forkguard.__all__ if callable(getattr(forkguard, name))}
    covered = {name for name in public if any(f"forkguard.{name}(" in case.call for case in API_CASES)}
    assert public - results - no_arguments - covered == set()
    assert len(API_CASES) >= 150, len(API_CASES)
