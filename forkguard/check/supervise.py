"""Run a command, or a check's worker, as a process tree the checker can always see, stop and kill.

The command runs under a small supervisor interpreter that is a child
subreaper (``PR_SET_CHILD_SUBREAPER``): a descendant that daemonises (double
fork, new session) is re-parented to the supervisor instead of init, so the
tree stays findable under it. When the checker says so, or when the checker
goes away (its control pipe reaches end of file), the supervisor kills every
process left under it.

Every interpreter started here is isolated from the caller (``python -I``:
no current directory, no user site-packages, no PYTHON* variables) and is
given an explicit path, the standard library and site-packages first.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from .._procfs import cmdline, descendants, running

PR_SET_CHILD_SUBREAPER = 36  # include/uapi/linux/prctl.h
SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)  # its bit in /proc/PID/status SigCgt
_BOOT = "import json,sys;c=json.loads(sys.argv[1]);sys.path.extend(c['path']);import {0};sys.exit({0}.{1}(c))"
# Each Python process (forked children too) registers faulthandler for SIGUSR1 into its own file in the stack
# directory, named by pid: the file's existence says this process dumps its Python stacks on SIGUSR1.
STACK_HOOK = '''
import faulthandler, os, signal

def _forkguard_stack_hook(directory=os.environ["FORKGUARD_STACK_DIR"]):
    stacks = open(os.path.join(directory, f"{os.getpid()}.txt"), "w")
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    globals()["_forkguard_stack_file"] = stacks

_forkguard_stack_hook()
os.register_at_fork(after_in_child=_forkguard_stack_hook)
'''


def python_command(module: str, function: str, config: dict[str, object]) -> list[str]:
    """``python -I -B -c`` running ``module.function(config)``, the standard library and site-packages first.

    -B: importing TARGET as root must not leave a root-owned __pycache__ in its directory.
    """
    import site

    import forkguard

    root = os.path.dirname(os.path.dirname(os.path.abspath(forkguard.__file__)))
    # -I drops the user's site-packages and PYTHONPATH; both are the choice of whoever runs the check (not of
    # whoever owns the directory it runs in), so they are kept, after the standard library and site-packages.
    user_site = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    explicit = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = list(dict.fromkeys([root, *user_site, *explicit]))
    return [sys.executable, "-I", "-B", "-c", _BOOT.format(module, function), json.dumps({**config, "path": path})]


@dataclass
class OutputTail:
    """What a command wrote on one stream: byte and line counts and the last lines (memory stays bounded)."""

    bytes: int = 0
    lines: int = 0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    _partial: bytes = b""

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        self.lines += data.count(b"\n")
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            self.tail.append(line[-1000:].decode(errors="replace"))
        self._partial = self._partial[-4096:]

    def text(self) -> str:
        partial = self._partial.decode(errors="replace")
        return "\n".join([*self.tail, partial] if partial else self.tail)

    def summary(self) -> dict[str, object]:
        return {"bytes": self.bytes, "lines": self.lines + (1 if self._partial else 0),
                "tail": self.text().splitlines()[-10:]}


@dataclass
class ProcessStacks:
    """One process of a tree: its Python stacks (every thread, from faulthandler) and native stacks (gdb)."""

    pid: int
    command: str
    python_stack: list[str] = field(default_factory=list)
    native_stack: list[str] = field(default_factory=list)
    native_note: str = ""
    fork_handler: dict[str, str] | None = None  # the pthread_atfork handler a thread is stuck in, if any


class Supervised:
    """A command started under the supervisor: its output captured, its reports read, its whole tree killable."""

    def __init__(self, command: list[str], *, env: dict[str, str] | None = None, run_as=None,  # type: ignore[no-untyped-def]
                 report: bool = False, stop: bool = False, stacks: bool = False, hook: bool = False,
                 pass_fds: tuple[int, ...] = (), label: str = "") -> None:
        """Start ``command`` (as ``run_as``, a forkguard._user.RunAs, if given).

        ``report``: a report pipe, its fd number in FORKGUARD_REPORT_FD. ``stop``: the command stops itself
        before exec, for gdb. ``stacks``: a private directory for Python stack files; ``hook``: Python
        commands register their faulthandler there (a sitecustomize put first on PYTHONPATH).
        ``pass_fds``: more descriptors the command inherits.
        """
        import tempfile

        self.command, self.label = command, label
        self.stdout, self.stderr = OutputTail(), OutputTail()
        self.exit_code: int | None = None
        self.stack_dir = tempfile.mkdtemp(prefix="forkguard-stacks-") if stacks else None
        env = dict(os.environ if env is None else env)
        if run_as is not None:
            env = run_as.environ(env)
        if self.stack_dir:
            env["FORKGUARD_STACK_DIR"] = self.stack_dir
            if hook:
                with open(os.path.join(self.stack_dir, "sitecustomize.py"), "w") as f:
                    f.write(STACK_HOOK)
                env["PYTHONPATH"] = os.pathsep.join(p for p in (self.stack_dir, env.get("PYTHONPATH")) if p)
            if run_as is not None:
                os.chown(self.stack_dir, run_as.uid, run_as.gid)  # the command writes its stack files here
        pipes = [os.pipe() for _ in range(4 + report)]
        (status_r, status_w), (control_r, control_w), (out_r, out_w), (err_r, err_w) = pipes[:4]
        self.report_fd = pipes[4][0] if report else None
        passed = [pipes[4][1]] if report else []
        passed += pass_fds
        if report:
            env["FORKGUARD_REPORT_FD"] = str(passed[0])  # the same number in the command (pass_fds keeps it)
        config = {"command": command, "status_fd": status_w, "control_fd": control_r, "pass_fds": passed,
                  "stop": stop,
                  "user": run_as.popen_kwargs() if run_as is not None and os.geteuid() == 0 else {}}
        try:
            self.supervisor = subprocess.Popen(python_command("forkguard.check.supervise", "supervisor_main", config),
                                               pass_fds=(status_w, control_r, *passed), stdin=subprocess.DEVNULL,
                                               stdout=out_w, stderr=err_w, env=env)
        finally:
            for fd in (status_w, control_r, out_w, err_w, *(passed[:1] if report else ())):
                os.close(fd)
        self._status: int | None = status_r
        self._control: int | None = control_w
        self._streams = {out_r: self.stdout, err_r: self.stderr}
        self._status_buffer = self._report_buffer = b""
        self.pid = 0
        deadline = time.monotonic() + 60
        while not self.pid:
            for kind, message in self.poll(max(0.0, deadline - time.monotonic())):
                if kind == "status" and "pid" in message:
                    self.pid = message["pid"]
                elif kind == "status" and "error" in message:
                    self.close()
                    from . import CheckError

                    raise CheckError(message["error"])
            if not self.pid and (time.monotonic() > deadline or self.supervisor.poll() is not None):
                self.close()
                from . import CheckError

                raise CheckError(f"could not start {command[0]}: {self.stderr.text().strip()[-300:] or 'no reason'}")

    def poll(self, timeout: float) -> list[tuple[str, dict]]:
        """Wait up to ``timeout`` s for news: ("status", {"pid"|"exit"|"error"}) and ("report", line) events."""
        events: list[tuple[str, dict]] = []
        fds = self._open_fds()
        if not fds:
            time.sleep(timeout)
            return events
        ready, _, _ = select.select(fds, [], [], timeout)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if fd in self._streams:
                self._streams[fd].feed(data)
                if not data:
                    del self._streams[fd]
            elif fd == self._status:
                self._status_buffer = self._lines(data, self._status_buffer, "status", events)
                if not data:
                    self._status = None
            else:
                self._report_buffer = self._lines(data, self._report_buffer, "report", events)
                if not data:
                    self.report_fd = None
            if not data:
                os.close(fd)
        for kind, message in events:
            if kind == "status" and "exit" in message:
                self.exit_code = message["exit"]
        return events

    def _open_fds(self) -> list[int]:
        return [fd for fd in (self._status, self.report_fd, *self._streams) if fd is not None]

    @staticmethod
    def _lines(data: bytes, buffer: bytes, kind: str, events: list[tuple[str, dict]]) -> bytes:
        *lines, rest = (buffer + data).split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    events.append((kind, json.loads(line)))
                except ValueError:
                    continue
        return rest

    def drain(self) -> list[tuple[str, dict]]:
        """Whatever the command and its reports wrote and is still in the pipes (after it exited)."""
        events: list[tuple[str, dict]] = []
        while True:
            more = self.poll(0)
            if not more and not self._readable():
                return events
            events += more

    def _readable(self) -> bool:
        fds = self._open_fds()
        return bool(fds) and bool(select.select(fds, [], [], 0)[0])

    def wait(self, timeout: float) -> int | None:
        """The command's exit code (negative: killed by that signal), or None if it still runs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.exit_code is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.poll(min(remaining, 1.0))
            if self.exit_code is None and self.supervisor.poll() is not None:
                from . import CheckError

                raise CheckError(f"the supervisor of {self.command[0]} ended unexpectedly: "
                                 f"{self.stderr.text().strip()[-300:]}")
        self.drain()
        return self.exit_code

    def processes(self) -> list[int]:
        """The live processes of the tree: the command and every descendant, daemonised ones included."""
        return [pid for pid in descendants(self.supervisor.pid) if running(pid)]

    def take_stacks(self, native: bool = True, gdb_timeout: float = 60, limit: int = 16) -> list[ProcessStacks]:
        """Python stacks (SIGUSR1, only to processes whose faulthandler hook catches it) and gdb's native stacks.

        ``native=False`` skips gdb (under valgrind it would only show valgrind's own frames).
        """
        from . import gdb

        pids = self.processes()[:limit]
        hooked = [pid for pid in pids if self.stack_dir and os.path.exists(self._stack_file(pid)) and _catches(pid)]
        for pid in hooked:
            os.kill(pid, signal.SIGUSR1)  # faulthandler writes every thread's Python stack into the pid's file
        deadline = time.monotonic() + 2
        while hooked and time.monotonic() < deadline and not all(os.path.getsize(self._stack_file(p)) for p in hooked):
            time.sleep(0.02)
        result = []
        for pid in pids:
            frames, note = gdb.attach(pid, gdb_timeout) if native else ([], "no native stacks under valgrind")
            name = self.label if pid == self.pid and self.label else cmdline(pid) or "?"
            stacks = ProcessStacks(pid, name, self.python_stacks(pid) if pid in hooked else [],
                                   gdb.render(frames), note, gdb.fork_handler(frames, pid))
            result.append(stacks)
        return result

    def _stack_file(self, pid: int) -> str:
        return os.path.join(self.stack_dir or "", f"{pid}.txt")

    def python_stacks(self, pid: int) -> list[str]:
        """The Python stacks ``pid`` wrote into its stack file (read without following a link the command put there)."""
        try:
            fd = os.open(self._stack_file(pid), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return []
        with os.fdopen(fd) as f:
            return python_frames(f.read(1 << 20))

    def close(self) -> list[int]:
        """Kill every process left in the tree; the pids that were still running (none the second time)."""
        if self._control is None:
            return []
        left = self.processes() if self.supervisor.poll() is None else []
        try:
            os.write(self._control, b"k")
        except OSError:
            pass
        try:
            self.supervisor.wait(30)
        except subprocess.TimeoutExpired:
            self.supervisor.kill()
            self.supervisor.wait()
        self.drain()
        for fd in (*self._open_fds(), self._control):
            os.close(fd)
        self._streams, self.report_fd, self._status, self._control = {}, None, None, None
        if self.stack_dir:
            import shutil

            shutil.rmtree(self.stack_dir, ignore_errors=True)
        return left

    def __enter__(self) -> Supervised:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def python_frames(text: str) -> list[str]:
    """faulthandler's thread headers and ``File "x.py", line N in f`` lines, in the order it printed them."""
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith("File ") or line.startswith(("Thread 0x", "Current thread 0x"))]


def _catches(pid: int) -> bool:
    """True when ``pid`` has a handler for SIGUSR1 (SigCgt): sending it to anything else would kill it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & SIGUSR1_BIT)
    except OSError:
        pass
    return False


def supervisor_main(config: dict) -> int:
    """The supervisor's body (a fresh interpreter): start the command, reap everything, kill the rest on request."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # Ctrl-C reaches the whole foreground group: the supervisor stays to clean up when the checker says so. A
    # Python handler, not SIG_IGN, so the command does not inherit an ignored SIGINT across exec.
    signal.signal(signal.SIGINT, lambda *_: None)
    status, control = config["status_fd"], config["control_fd"]
    command = config["command"]
    if config["stop"]:  # stopped before exec, for gdb to attach (as root) before the command's first instruction
        command = ["/bin/sh", "-c", 'kill -STOP $$ && exec "$@"', "sh", *command]
    try:
        child = subprocess.Popen(command, pass_fds=config["pass_fds"], **config["user"])
    except OSError as exc:
        _send(status, {"error": f"cannot run {config['command'][0]}: {exc.strerror or exc}"})
        return 0
    for fd in config["pass_fds"]:
        os.close(fd)
    _send(status, {"pid": child.pid})
    while True:
        _reap(status, child.pid)
        ready, _, _ = select.select([control], [], [], 0.05)
        if ready and os.read(control, 64) in (b"", b"k"):  # asked to end, or the checker is gone
            break
    _kill_tree(status, child.pid)
    return 0


def _send(fd: int, message: dict) -> None:
    os.write(fd, json.dumps(message).encode() + b"\n")


def _reap(status: int, main: int) -> None:
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == main:
            try:
                _send(status, {"exit": os.waitstatus_to_exitcode(wait_status)})
            except OSError:
                pass


def _kill_tree(status: int, main: int) -> None:
    """SIGKILL every descendant until none is left (orphans of killed processes come back to us: we reap them)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(status, main)
        time.sleep(0.005)
