"""Fork stress: call a target in children forked early (nothing live) and late (while it runs in a thread).

A late fork copies a process in the middle of the target's native work: a lock
its thread holds stays held forever in the child, state is half-updated. Each
child calls the target once and is classified: clean, failed (exit status),
crashed (signal) or hung (killed after ``timeout``). Children report which
forkguard features the late-fork policy disabled, which is what keeps a
target that checks ``feature.enabled`` safe.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from .target import resolve, worker_env, worker_error


@dataclass
class KindResult:
    kind: str
    forks: int
    clean: int = 0
    failed: int = 0
    crashed: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    disabled_features: list[str] = field(default_factory=list)


@dataclass
class ForkReport:
    target: str
    early: KindResult
    late: KindResult

    @property
    def safe(self) -> bool:
        return all(k.clean == k.forks for k in (self.early, self.late))

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "safe": self.safe}


def _one_fork(fn, timeout: float, result: KindResult) -> None:  # type: ignore[no-untyped-def]
    import forkguard

    read_end, write_end = os.pipe()
    pid = os.fork()
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
        result.hung += 1
        status = None
    data = os.read(read_end, 65536)
    os.close(read_end)
    for name in json.loads(data or b"[]"):
        if name not in result.disabled_features:
            result.disabled_features.append(name)
    if status is None:
        return
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        result.crashed[name] = result.crashed.get(name, 0) + 1
    elif os.WEXITSTATUS(status) == 0:
        result.clean += 1
    else:
        result.failed += 1


def run(target: str, forks: int, timeout: float) -> ForkReport:
    """In this process: early forks, then late forks while a thread runs the target in a live context."""
    import forkguard


    fn = resolve(target)
    fn()  # native state exists before any fork, as in a real service
    early = KindResult("early", forks)
    for _ in range(forks):
        _one_fork(fn, timeout, early)
    late = KindResult("late", forks)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            with forkguard.active("forkguard-check"):
                fn()

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    time.sleep(0.05)
    for _ in range(forks):
        _one_fork(fn, timeout, late)
    stop.set()
    return ForkReport(target, early, late)


def fork_stress(target: str, forks: int = 10, timeout: float = 5.0) -> ForkReport:
    """Run the fork stress in a fresh interpreter; CheckError on bad input or a target that fails alone."""
    import subprocess

    from . import CheckError

    if isinstance(forks, bool) or not isinstance(forks, int) or forks < 1:
        raise CheckError(f"--forks must be an int >= 1, not {forks!r}")
    if not timeout > 0:
        raise CheckError(f"--timeout must be a number of seconds > 0, not {timeout!r}")
    proc = subprocess.run([sys.executable, "-m", "forkguard.check._fork_worker", target, str(forks), str(timeout)],
                          capture_output=True, text=True, env=worker_env(),
                          timeout=60 + 2 * forks * (timeout + 1))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    data = json.loads(lines[-1]) if lines else {"error": f"the worker ended with status {proc.returncode}: "
                                                        f"{proc.stderr.strip().splitlines()[-1:]}"}
    if "error" in data:
        raise CheckError(data["error"])
    return ForkReport(data["target"], KindResult(**data["early"]), KindResult(**data["late"]))


def worker_main(argv: list[str]) -> int:
    """The worker's body: the report as one JSON line (run by ``forkguard.check._fork_worker``)."""

    target, forks, timeout = argv[0], int(argv[1]), float(argv[2])
    try:
        report = run(target, forks, timeout)
    except Exception as exc:
        return worker_error(target, exc, " (before any fork)")
    print(json.dumps(asdict(report)), flush=True)
    os._exit(0)  # the busy thread may be stuck in native code: do not wait for it
