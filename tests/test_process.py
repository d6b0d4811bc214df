"""Which process are we in: libc forks with threads, import under a hostile kernel, the CLI's own process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_json, run_python

from forkguard._env import running_forkguard_cli

LIBC_FORKS = '''
import ctypes, json, os, sys, threading, time
import forkguard
stop = False
def busy():                            # keeps the GIL contended, as a serving thread does
    x = 0
    while not stop:
        x += 1
service = forkguard.Service(lambda: None, interval=0.001)
service.start()
for _ in range(2):
    threading.Thread(target=busy, daemon=True).start()
fork = ctypes.PyDLL(None).fork         # libc fork(): no PyOS_BeforeFork/AfterFork, no at-fork hook
outcomes = []
for _ in range({forks}):
    time.sleep(0.002)
    pid = fork()
    if pid == 0:
        forkguard.check_fork()
        t = threading.Thread(target=lambda: None); t.start(); t.join()   # lets go of the GIL
        time.sleep(0.02)
        names = [t.name for t in threading.enumerate()]
        ok = (forkguard.fork_info().detected_by == "check_fork" and service.running
              and names.count(service.name) == 1 and len(names) == 2)
        os._exit(0 if ok else 3)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            outcomes.append(os.waitstatus_to_exitcode(status))
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9); os.waitpid(pid, 0); outcomes.append("hung")
            break
        time.sleep(0.005)
stop = True
print(json.dumps(outcomes))
'''


def test_libc_fork_with_busy_threads_and_a_service_never_hangs_the_child():
    """Defect: check_fork() ran forkguard's child step but not CPython's; ~1 child in 2 hung at its first I/O."""
    outcomes = run_json(LIBC_FORKS.format(forks=25), timeout=300)
    assert outcomes == [0] * 25, outcomes


def test_libc_fork_child_that_started_a_thread_first_is_warned_not_corrupted():
    out = run_python('''
import ctypes, os, threading, time
import forkguard
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    t = threading.Thread(target=time.sleep, args=(0.2,)); t.start()
    forkguard.check_fork()             # too late for CPython's after-fork step: t has a thread state
    t.join()
    os._exit(0 if forkguard.fork_info().detected_by == "check_fork" else 3)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
''')
    assert out.stdout.strip() == "0"
    assert "could not run: a thread was started in the child before forkguard saw the fork" in out.stderr


# Classic BPF for seccomp (include/uapi/linux/filter.h, seccomp.h): fail with ENOMEM
# exactly the mmap forkguard's wipe-on-fork page needs (4096 bytes, MAP_PRIVATE|MAP_ANONYMOUS).
REFUSE_ONE_PAGE_MMAP = '''
import ctypes, struct
def insn(code, jt, jf, k): return struct.pack("HBBI", code, jt, jf, k)
LD, JEQ, RET = 0x20, 0x15, 0x06
ALLOW, ERRNO = 0x7FFF0000, 0x00050000
program = b"".join([
    insn(LD, 0, 0, 4), insn(JEQ, 0, 7, 0xC000003E),          # arch == x86_64, else allow
    insn(LD, 0, 0, 0), insn(JEQ, 0, 5, 9),                   # nr == mmap
    insn(LD, 0, 0, 24), insn(JEQ, 0, 3, 4096),               # length == one page
    insn(LD, 0, 0, 40), insn(JEQ, 0, 1, 0x22),               # flags == MAP_PRIVATE|MAP_ANONYMOUS
    insn(RET, 0, 0, ERRNO | 12),                             # ENOMEM
    insn(RET, 0, 0, ALLOW),
])
buf = ctypes.create_string_buffer(program)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(program) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()   # PR_SET_SECCOMP, FILTER
'''


@pytest.mark.skipif(sys.maxsize < 2**32 or not sys.platform.startswith("linux") or
                    __import__("platform").machine() != "x86_64", reason="the filter is written for x86_64")
def test_import_survives_a_refused_wipe_on_fork_page_and_still_catches_libc_forks():
    """Defect: an mmap refused by seccomp, RLIMIT_AS or vm.max_map_count made `import forkguard` raise."""
    out = run_json(REFUSE_ONE_PAGE_MMAP + '''
import json, mmap, os
try:
    mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    refused = False
except OSError:
    refused = True
import forkguard
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    os._exit(0 if forkguard.check_fork() and forkguard.fork_info().detected_by == "check_fork" else 3)
print(json.dumps({"refused": refused, "detection": forkguard._process.DETECTION,
                  "child": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}))
''')
    assert out == {"refused": True, "detection": "getpid", "child": 0}


@pytest.mark.parametrize("variable, value", [("FORKGUARD_FORK_DETECTION", "sometimes"),
                                             ("FORKGUARD_STRICT_HOOKS", "maybe"),
                                             ("FORKGUARD_SLOW_HOOK_SECONDS", "nan")])
def test_bad_runtime_variable_fails_an_import_in_one_line_but_not_the_cli(variable, value):
    env = {variable: value}
    app = run_python("import forkguard", env=env, check=False)
    assert app.returncode != 0 and app.stderr.strip().splitlines()[-1].startswith(f"ValueError: {variable}=")
    for argv in (["-m", "forkguard", "--version"], ["-W", "error", "-m", "forkguard", "--version"]):
        cli = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=60,
                             env={**os.environ, **env})
        assert cli.returncode == 0 and cli.stdout.startswith("forkguard "), (argv, cli.stderr)


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "forkguard", "trace"], True),
    (["python", "-W", "error", "-m", "forkguard"], True),
    (["python", "-Werror", "-X", "dev", "-Im", "forkguard"], True),
    (["python", "-I", "-mforkguard"], True),
    (["python", "--check-hash-based-pycs", "always", "-m", "forkguard"], True),
    (["python", "/venv/bin/forkguard", "run"], True),
    (["python", "-m", "forkguardx"], False),
    (["python", "-c", "import forkguard", "-m", "forkguard"], False),
    (["python", "-W", "-m", "app.py"], False),          # "-m" is -W's value here, app.py the script
    (["python", "app.py", "-m", "forkguard"], False),
    (["python", "-"], False),
    (["python"], False),
])
def test_the_cli_process_is_recognised_through_interpreter_options(argv, expected):
    assert running_forkguard_cli(argv) is expected
