"""The signal trigger (seed 001): a libc-forked child runs its child step when signalled, once."""

from __future__ import annotations

from conftest import run_json, run_python


def test_sigusr2_runs_the_child_step_in_a_libc_forked_child_and_chains_the_previous_handler(tmp_path):
    log = tmp_path / "log"
    out = run_json(f'''
import ctypes, json, os, signal, time
import forkguard
def note(text):
    with open({str(log)!r}, "a") as f:
        f.write(f"{{text}} {{os.getpid()}}\\n")
signal.signal(signal.SIGUSR2, lambda s, f: note("previous"))
forkguard.register(after_in_child=lambda: note("child-step"))
forkguard.install_signal_trigger()
os.kill(os.getpid(), signal.SIGUSR2)          # not a fork: only the previous handler runs
time.sleep(0.1)
pid = ctypes.PyDLL(None).fork()               # C-level fork: no Python hook runs
if pid == 0:
    deadline = time.monotonic() + 10          # plain Python that never touches forkguard
    while time.monotonic() < deadline and "child-step" not in open({str(log)!r}).read():
        time.sleep(0.02)
    os._exit(0)
time.sleep(0.3)
before_signal = open({str(log)!r}).read()
os.kill(pid, signal.SIGUSR2)
os.kill(pid, signal.SIGUSR2)                  # a second signal must not run the step again
_, status = os.waitpid(pid, 0)
print(json.dumps({{"parent": os.getpid(), "child": pid, "before": before_signal, "status": status}}))
''')
    lines = log.read_text().splitlines()
    assert out["before"] == f"previous {out['parent']}\n"      # nothing ran in the child before the signal
    assert lines.count(f"child-step {out['child']}") == 1
    assert f"previous {out['child']}" in lines                 # chained in the child too
    assert out["status"] == 0


def test_uninstall_restores_the_previous_handler_and_bad_signals_are_refused():
    out = run_json('''
import json, signal, forkguard
mine = lambda s, f: None
signal.signal(signal.SIGUSR1, mine)
forkguard.install_signal_trigger(signal.SIGUSR1)
installed = signal.getsignal(signal.SIGUSR1) is not mine
forkguard.uninstall_signal_trigger(signal.SIGUSR1)
errors = []
for bad in (signal.SIGKILL, 12345):
    try:
        forkguard.install_signal_trigger(bad)
    except ValueError as exc:
        errors.append(str(exc))
print(json.dumps({"installed": installed, "restored": signal.getsignal(signal.SIGUSR1) is mine, "errors": errors}))
''')
    assert out["installed"] and out["restored"]
    assert len(out["errors"]) == 2 and all("is not a signal a handler can catch" in e for e in out["errors"])


def test_trigger_replaces_a_default_that_would_kill():
    proc = run_python('''
import os, signal, forkguard
forkguard.install_signal_trigger()
os.kill(os.getpid(), signal.SIGUSR2)   # SIGUSR2's default action ends the process; the trigger does not
print("alive")
''')
    assert proc.stdout.strip() == "alive"
