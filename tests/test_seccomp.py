"""The kernel deny rule (forkguard._seccomp): every way to create a process, on each ABI, against the real kernel.

Each child a call could create writes a marker file and exits at once, so a
rule that lets one through is seen twice: by the marker and in /proc.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compile_shared, run_json

# Process creation below Python: raw system calls on the x86_64, i386 (int 0x80) and x32 ABIs.
# A child that gets created writes the marker and exits; the parent returns what the kernel said.
NATIVE = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *marker;
static long child(long r) { if (r == 0) { close(open(marker, O_CREAT | O_WRONLY, 0600)); _exit(0); } return r; }
void set_marker(const char *path) { marker = path; }

long raw_clone(unsigned long flags) { return child(syscall(SYS_clone, flags, 0, 0, 0, 0)); }

long raw_clone3(void) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    return child(syscall(435, &args, sizeof args));
}

static long int80(long nr, long a1) {  /* the i386 ABI from a 64-bit process; returns -errno */
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a1), "c"(0L), "d"(0L), "S"(0L), "D"(0L) : "memory");
    return r;
}
long i386_getpid(void) { return int80(20, 0); }
long i386_fork(void) { return child(int80(2, 0)); }
long i386_clone(unsigned long flags) { return child(int80(120, (long)flags)); }

long x32_fork(void) { return child(syscall(0x40000000 | 57)); }
"""

# What each call gives under the rule, for deny_exec False and True. README's kernel-rule table says the same.
EXPECTED = {
    "thread (ThreadPoolExecutor)": ("ok", "ok"),
    "os.fork()": ("ENOTSUP", "ENOTSUP"),
    "libc fork()": ("ENOTSUP", "ENOTSUP"),
    "clone(SIGCHLD)": ("ENOTSUP", "ENOTSUP"),
    "clone3()": ("ENOSYS", "ENOSYS"),
    "i386 fork (int 0x80)": ("ENOTSUP", "ENOTSUP"),
    "i386 clone (int 0x80)": ("ENOTSUP", "ENOTSUP"),
    "x32 fork": ("ENOSYS", "ENOSYS"),
    "subprocess.run(['true'])": ("ok", "ENOTSUP"),
    "os.posix_spawn": ("ok", "ENOTSUP"),
    "os.system('true')": ("ok", "failed"),
    "subprocess with preexec_fn": ("ENOTSUP", "ENOTSUP"),
    "sh -c 'true | true'": ("failed", "ENOTSUP"),
}

CALLS = r"""
import concurrent.futures, ctypes, errno, json, os, subprocess, sys
from forkguard import _seccomp

native = ctypes.CDLL(sys.argv[1], use_errno=True)
for name in ("raw_clone", "i386_fork", "i386_clone", "x32_fork", "raw_clone3", "i386_getpid"):
    getattr(native, name).restype = ctypes.c_long
marker = sys.argv[2]
marker_bytes = marker.encode()  # the C side keeps the pointer: this object must live as long as the process
native.set_marker(marker_bytes)
libc = ctypes.CDLL(None, use_errno=True)

def raw(result, negative_errno=False):
    if negative_errno:
        return "ok" if result >= 0 else errno.errorcode[-result]
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]

def call(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def status(args):
    try:
        return "ok" if subprocess.run(args, capture_output=True).returncode == 0 else "failed"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def child_then_marker():
    pid = os.fork()
    if pid == 0:
        open(marker, "w").close()
        os._exit(0)
    os.waitpid(pid, 0)

def libc_fork():
    pid = libc.fork()
    if pid == 0:
        open(marker, "w").close()
        os._exit(0)
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork")
    os.waitpid(pid, 0)

def spawn():
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    os.waitpid(pid, 0)

if sys.argv[3] != "none":
    _seccomp.install(deny_exec=sys.argv[3] == "deny_exec")
ia32 = native.i386_getpid() == os.getpid()
out = {
    "thread (ThreadPoolExecutor)": "ok" if concurrent.futures.ThreadPoolExecutor(4).submit(lambda: 42).result() == 42
                                   else "failed",
    "os.fork()": call(child_then_marker),
    "libc fork()": call(libc_fork),
    "clone(SIGCHLD)": raw(native.raw_clone(17)),
    "clone3()": raw(native.raw_clone3()),
    "i386 fork (int 0x80)": raw(native.i386_fork(), True) if ia32 else "ENOTSUP",
    "i386 clone (int 0x80)": raw(native.i386_clone(17), True) if ia32 else "ENOTSUP",
    "x32 fork": raw(native.x32_fork()),
    "subprocess.run(['true'])": call(lambda: subprocess.run(["true"], check=True)),
    "os.posix_spawn": call(spawn),
    "os.system('true')": "ok" if os.system("true") == 0 else "failed",
    "subprocess with preexec_fn": call(lambda: subprocess.run(["true"], preexec_fn=lambda: None)),
    "sh -c 'true | true'": status(["sh", "-c", "true | true"]),
}
# Reap whatever a broken rule let through, then look for it in /proc too.
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
out["ia32"] = ia32
out["marker"] = os.path.exists(marker)
out["kernel"] = _seccomp.active_rule()
out["threads"] = len(os.listdir("/proc/self/task"))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    return compile_shared(NATIVE, tmp_path_factory.mktemp("native"), "spawners")


def run_calls(native: Path, tmp_path: Path, rule: str) -> dict[str, object]:
    script = tmp_path / "calls.py"
    script.write_text(CALLS)
    marker = tmp_path / "child-ran"
    proc = subprocess.run([sys.executable, str(script), str(native), str(marker), rule], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("deny_exec", [False, True], ids=["deny", "deny_exec"])
def test_the_rule_refuses_every_process_creating_call_and_lets_threads_through(native, tmp_path, deny_exec):
    out = run_calls(native, tmp_path, "deny_exec" if deny_exec else "deny")
    got = {name: out[name] for name in EXPECTED}
    assert got == {name: expected[deny_exec] for name, expected in EXPECTED.items()}
    assert out["marker"] is False  # no refused call created a child that ran
    assert out["kernel"] == {"deny_exec": deny_exec}
    assert out["ia32"] is True, "this kernel runs i386 calls from 64-bit processes: the i386 cells must be real"


def test_without_the_rule_the_same_calls_create_processes(native, tmp_path):
    """The control: each refused call above does create a process when the rule is not there."""
    out = run_calls(native, tmp_path, "none")
    for name in ("os.fork()", "libc fork()", "clone(SIGCHLD)", "clone3()", "i386 fork (int 0x80)",
                 "i386 clone (int 0x80)", "subprocess with preexec_fn", "sh -c 'true | true'"):
        assert out[name] == "ok", name
    assert out["marker"] is True
    assert out["kernel"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.py", "child-ran"]  # each child wrote the marker


def test_kernel_rule_is_read_from_the_kernel_not_from_the_environment():
    out = run_json("""
import json, os, subprocess, sys
from forkguard import _seccomp
from forkguard._policy import fork_mode
first = fork_mode()["kernel"]
_seccomp.load([(0x06, 0, 0, _seccomp.SECCOMP_RET_ALLOW)])  # someone else's filter (allow everything)
other = fork_mode()["kernel"]
_seccomp.install(deny_exec=False)
mine = fork_mode()["kernel"]
import forkguard
forkguard.set_fork_mode("deny")
forkguard.set_fork_mode("allow")  # the Python-level mode only: the kernel rule cannot be taken back
try:
    os.fork()
    after_allow = "forked"
except OSError as exc:
    after_allow = [exc.errno, fork_mode()["mode"], fork_mode()["kernel"]]
# An exec'd child inherits the filter, whatever its environment says; a new process started elsewhere with
# the same variables has no filter.
code = "import json, forkguard; print(json.dumps(forkguard.fork_mode()))"
child = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  env={**os.environ, "FORKGUARD_FORK_MODE": "allow"}).stdout)
print(json.dumps({"first": first, "other": other, "mine": mine, "child": child, "after_allow": after_allow}))
""", env={"FORKGUARD_FORK_MODE": "deny"})
    assert out["first"] is None and out["other"] is None  # a variable, or another filter, is not the rule
    assert out["mine"] == {"deny_exec": False}
    assert out["child"]["mode"] == "allow" and out["child"]["kernel"] == {"deny_exec": False}
    assert out["after_allow"] == [95, "allow", {"deny_exec": False}]


def test_an_unprivileged_process_installs_the_rule_with_no_new_privs():
    """The kernel accepts an unprivileged filter only with no_new_privs: install() sets it, and a user needs no more."""
    python = "/usr/bin/python3"
    code = ("import ctypes, errno, json, os, sys; sys.path.insert(0, sys.argv[1]); from forkguard import _seccomp\n"
            "_seccomp.install(False)\n"
            "status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
            "r = ctypes.CDLL(None, use_errno=True).fork()\n"
            "r == 0 and os._exit(0)\n"
            "print(json.dumps({'uid': os.getuid(), 'nnp': status['NoNewPrivs'].strip(), 'fork': r,\n"
            "                  'errno': ctypes.get_errno(), 'kernel': _seccomp.active_rule()}))")
    assert os.path.exists(python), "the system Python (readable by nobody) is part of CI's Debian image"
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c", code,
                           str(ROOT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["uid"] != 0 and out["nnp"] == "1"
    assert out["fork"] == -1 and out["errno"] == 95 and out["kernel"] == {"deny_exec": False}


@pytest.mark.parametrize("deny_exec", [False, True], ids=["deny", "deny_exec"])
def test_forkguard_run_enforce_kernel_creates_no_process_outside_the_thread_group(tmp_path, deny_exec):
    """In a new pid namespace every process and thread takes the next pid, so the namespace's last pid
    accounts for each one ever created: threads of the program, and the documented subprocess, nothing else."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("needs root and unshare (util-linux): CI has both")
    (tmp_path / "prog.py").write_text(r"""
import concurrent.futures, ctypes, errno, json, os, subprocess, threading
marker = "child-ran"
def job(n):
    return threading.get_native_id()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    tids = set(pool.map(job, range(64)))
    tids |= {int(t) for t in os.listdir("/proc/self/task")}  # the pool's threads that got no job too
out = {"pid": os.getpid(), "tids": sorted(tids), "results": {}}
try:
    pid = os.fork()
    if pid == 0:
        open(marker, "w").close(); os._exit(0)
    out["results"]["os.fork"] = "ok"
except OSError as exc:
    out["results"]["os.fork"] = errno.errorcode[exc.errno]
pid = ctypes.CDLL(None, use_errno=True).fork()
if pid == 0:
    open(marker, "w").close(); os._exit(0)
out["results"]["libc fork"] = "ok" if pid > 0 else errno.errorcode[ctypes.get_errno()]
try:
    p = subprocess.Popen(["true"]); p.wait()
    out["subprocess_pid"] = p.pid
    out["results"]["subprocess.run(['true'])"] = "ok"
except OSError as exc:
    out["results"]["subprocess.run(['true'])"] = errno.errorcode[exc.errno]
out["last_pid"] = int(open("/proc/sys/kernel/ns_last_pid").read())
out["children"] = [c for t in os.listdir("/proc/self/task")
                   for c in open(f"/proc/self/task/{t}/children").read().split()]
out["fork_mode"] = __import__("forkguard").fork_mode()
print(json.dumps(out))
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKGUARD_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(["unshare", "-fp", "--mount-proc", sys.executable, "-m", "forkguard", "run", "--enforce",
                           "kernel", "--fork-mode", "deny", *(["--deny-exec"] if deny_exec else []), "--",
                           sys.executable, "prog.py"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["pid"] == 1  # forkguard run exec'd the program: no process in between
    assert out["results"] == {"os.fork": "ENOTSUP", "libc fork": "ENOTSUP",
                              "subprocess.run(['true'])": "ENOTSUP" if deny_exec else "ok"}
    allowed = {1, *out["tids"], *([out["subprocess_pid"]] if not deny_exec else [])}
    assert set(range(1, out["last_pid"] + 1)) <= allowed, "a pid went to a process outside the thread group"
    assert out["children"] == [] and not (tmp_path / "child-ran").exists()
    assert out["fork_mode"]["mode"] == "deny" and out["fork_mode"]["kernel"] == {"deny_exec": deny_exec}
