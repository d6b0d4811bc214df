"""Fork stress: call a target in children forked early (nothing live) and late (while it runs in a thread).

A late fork copies a process in the middle of the target's native work: a lock
its thread holds stays held forever in the child, state is half-updated. Each
child calls the target once and is classified: clean, failed (exit status),
crashed (signal) or hung (killed after ``timeout``). Children report which
forkguard features the late-fork policy disabled, which is what keeps a
target that checks ``feature.enabled`` safe.

The parent's own ``fork()`` can deadlock too: glibc runs the libraries'
``pthread_atfork`` handlers first, and a handler that waits for a thread which
waits for the GIL (OpenBLAS after a matrix multiply) never returns. The worker
reports before and after each fork on its channel; a fork that does not return
within ``timeout`` is a finding, with the worker's stacks and the at-fork
handler it is stuck in, and the children counted so far are kept.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .options import count, seconds
from .target import Target, parse_target, resolve

STARTUP = 60.0  # seconds for the worker to import and call TARGET once, on top of --timeout


@dataclass
class KindResult:
    kind: str
    forks: int
    clean: int = 0
    failed: int = 0
    crashed: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    disabled_features: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.clean + self.failed + sum(self.crashed.values()) + self.hung


@dataclass
class ForkReport:
    target: str
    forks: int
    timeout: float
    seconds: float
    early: KindResult
    late: KindResult
    parent_hang: dict[str, Any] | None = None  # the worker's own fork() did not return: where it is stuck
    output: dict[str, Any] = field(default_factory=dict)
    crash: dict[str, Any] | None = None  # the worker itself was killed by a signal (the target's busy thread)

    @property
    def safe(self) -> bool:
        return (self.parent_hang is None and self.crash is None
                and all(k.clean == k.forks for k in (self.early, self.late)))

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "safe": self.safe}


def fork_stress(target: str, forks: int = 10, timeout: float = 5.0) -> ForkReport:
    """Run the fork stress in a fresh interpreter; CheckError (or TargetError) when it cannot run."""
    from . import CheckError, worker

    parsed = parse_target(target)
    forks = count(forks, "forks", high=10_000)
    timeout = seconds(timeout, "timeout")
    start = time.monotonic()
    results = {"early": KindResult("early", forks), "late": KindResult("late", forks)}
    parent_hang = crash = None
    run = worker.start("fork", parsed, {"forks": forks, "timeout": timeout})
    try:
        deadline, waiting = time.monotonic() + STARTUP + timeout, ("start", "", 0)
        done = False
        while not done and run.exit_code is None and time.monotonic() < deadline:
            for kind, message in run.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                if kind != "report":
                    continue
                if "error" in message:
                    raise CheckError(message["error"])
                if "fork" in message:  # fork() is about to be called: it must return within the timeout
                    waiting, deadline = ("fork", message["fork"], message["index"]), time.monotonic() + timeout
                elif "forked" in message or "started" in message:  # the worker waits for the child (timeout)
                    waiting, deadline = ("child", message.get("forked", ""), 0), time.monotonic() + timeout + 10
                elif "child" in message:
                    _count(results[message["child"]], message)
                    deadline = time.monotonic() + timeout + 10
                elif "done" in message:
                    done = True
        if not done:
            for kind, message in run.drain():
                if kind == "report" and "error" in message:
                    raise CheckError(message["error"])
                if kind == "report" and "child" in message:
                    _count(results[message["child"]], message)
                done = done or (kind == "report" and "done" in message)
        if not done and run.exit_code is not None and run.exit_code < 0:
            crash = worker.crashed(run)
        elif not done and run.exit_code is not None:
            raise CheckError(f"the worker running {target} ended with status {run.exit_code} after "
                             f"{results['early'].done} early and {results['late'].done} late forks: "
                             f"{run.stderr.text().strip()[-300:]}")
        elif not done:
            stacks = run.take_stacks()
            handler = next((p.fork_handler for p in stacks if p.fork_handler), None)
            parent_hang = {"waiting_for": waiting[0], "kind": waiting[1], "index": waiting[2], "timeout": timeout,
                           "fork_handler": handler, "processes": [asdict(p) for p in stacks]}
    finally:
        run.close()
    return ForkReport(target, forks, timeout, time.monotonic() - start, results["early"], results["late"],
                      parent_hang, {"stdout": run.stdout.summary(), "stderr": run.stderr.summary()}, crash)


def _count(result: KindResult, message: dict[str, Any]) -> None:
    outcome = message["outcome"]
    if outcome == "crashed":
        result.crashed[message["signal"]] = result.crashed.get(message["signal"], 0) + 1
    else:
        setattr(result, outcome, getattr(result, outcome) + 1)
    for name in message["disabled"]:
        if name not in result.disabled_features:
            result.disabled_features.append(name)


# --- the worker


def _one_fork(fn, kind: str, index: int, timeout: float, channel) -> None:  # type: ignore[no-untyped-def]
    import forkguard

    read_end, write_end = os.pipe()
    channel.send(fork=kind, index=index)
    pid = os.fork()  # where a library's at-fork handler may deadlock: the checker watches for "forked"
    if pid == 0:
        os.close(read_end)
        disabled = [c.feature for c in forkguard.fork_info().feature_changes if c.action == "disabled"]
        os.write(write_end, json.dumps(disabled).encode())
        os.close(write_end)
        try:
            fn()
        except BaseException:
            os._exit(1)
        os._exit(0)
    os.close(write_end)
    channel.send(forked=kind, index=index)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.005)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        status = None
    data = os.read(read_end, 65536)
    os.close(read_end)
    message: dict[str, Any] = {"child": kind, "disabled": json.loads(data or b"[]"), "signal": None}
    if status is None:
        message["outcome"] = "hung"
    elif os.WIFSIGNALED(status):
        message.update(outcome="crashed", signal=signal.Signals(os.WTERMSIG(status)).name)
    else:
        message["outcome"] = "clean" if os.WEXITSTATUS(status) == 0 else "failed"
    channel.send(**message)


def worker(target: Target, options: dict[str, Any], channel) -> None:  # type: ignore[no-untyped-def]
    """The worker's body: early forks, then late forks while a thread runs the target in a live context."""
    import forkguard

    forks, timeout = int(options["forks"]), float(options["timeout"])
    fn = resolve(target)
    try:
        fn()  # native state exists before any fork, as in a real service
    except Exception as exc:
        channel.send(error=f"{target.spec} raised {type(exc).__name__}: {exc} (before any fork)")
        return
    channel.send(started=True)
    for index in range(forks):
        _one_fork(fn, "early", index, timeout, channel)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            with forkguard.active("forkguard-check"):
                fn()

    threading.Thread(target=busy, daemon=True).start()
    time.sleep(0.05)
    for index in range(forks):
        _one_fork(fn, "late", index, timeout, channel)
    stop.set()
    channel.send(done=True)
    os._exit(0)  # the busy thread may be stuck in native code: do not wait for it
