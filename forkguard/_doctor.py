"""What could go wrong if this process (or another) forked now: plain data for ``forkguard doctor``."""

from __future__ import annotations

import os
import sys

from . import _exitmode, _features, _hooks, _policy, _primitives, _process, _resources, _runtime


def doctor(pid: int | None = None) -> dict[str, object]:
    """Fork hazards of this process, or of process ``pid`` (what /proc tells of it).

    Threads (and the forkguard locks they hold), descriptors that exec'd
    children inherit, sockets and their state, and for this process its
    tracked resources, hooks, features and policies. ``hazards`` says in
    sentences what to look at.
    """
    from ._procfs import check_pid, cmdline  # here, not at `import forkguard`: only a report needs it

    if pid is not None:
        check_pid(pid, "forkguard.doctor")
    own = pid is None or pid == os.getpid()
    pid = os.getpid() if pid is None else pid
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessLookupError(f"no process {pid}")
    report: dict[str, object] = {"pid": pid, "own_process": own, "command": cmdline(pid),
                                 "threads": _threads(pid, own), "descriptors": [fd._asdict() for fd in
                                                                                _resources.inherited(pid)]}
    if own:
        _process.check_fork()
        info = _runtime.fork_info()
        report.update({
            "fork_info": {**info._asdict(), "feature_changes": [c._asdict() for c in info.feature_changes]},
            "fork_mode": _policy.fork_mode(), "exit_mode": _exitmode.exit_mode(),
            "tracked": [t._asdict() for t in _resources.tracked()],
            "inherit_preset": _resources._state.preset,
            "hooks": [repr(h) for h in _hooks.registry.hooks()],
            "features": [{"name": f.name, "enabled": f._enabled, "late_fork": f.late_fork,
                          "disabled_reason": f.disabled_reason} for f in _features.features()],
        })
    report["hazards"] = _hazards(report)
    return report



def _threads(pid: int, own: bool) -> list[dict[str, object]]:
    names: dict[int, str] = {}
    holders: dict[int, list[str]] = {}
    if own and "threading" in sys.modules:
        import threading

        idents = {}
        for thread in threading.enumerate():
            names[thread.native_id] = thread.name  # type: ignore[index]
            idents[thread.ident] = thread.native_id
        for owner, lock in _primitives.held_locks():
            holders.setdefault(idents.get(owner, -1), []).append(f"forkguard.Lock at {id(lock):#x}")
    threads = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        threads.append({"tid": tid, "name": names.get(tid, comm), "holds": holders.get(tid, [])})
    return threads


def _hazards(report: dict[str, object]) -> list[str]:
    hazards = []
    threads = report["threads"]
    if len(threads) > 1:  # type: ignore[arg-type]
        hazards.append(f"{len(threads)} threads: a fork copies only the forking one; any lock another "  # type: ignore[arg-type]
                       "thread holds at that instant stays locked in the child (use forkguard.Lock & co.)")
    for thread in threads:  # type: ignore[union-attr]
        for held in thread["holds"]:
            hazards.append(f"thread {thread['name']!r} holds {held} now: fresh in a child, by forkguard")
    for fd in report["descriptors"]:  # type: ignore[union-attr]
        if fd["fd"] > 2 and not fd["cloexec"]:
            what = fd["target"] if fd["kind"] != "socket" else f"{fd['kind']} {(fd['socket'] or {}).get('state')}"
            hazards.append(f"fd {fd['fd']} ({what}) has no close-on-exec: every exec'd child inherits it")
        if fd["kind"] == "socket" and (fd["socket"] or {}).get("state") == "listening" and \
                report.get("inherit_preset", "posix") == "posix":
            hazards.append(f"fd {fd['fd']} listens on {(fd['socket'] or {}).get('local')}: children share it "
                           "and can accept its connections (preset seed, or track(sock, 'close'), stops that)")
    for feature in report.get("features", []):  # type: ignore[union-attr]
        if not feature["enabled"]:
            hazards.append(f"feature {feature['name']!r} is disabled: {feature['disabled_reason']}")
    return hazards
