"""The process-tree view: which processes the target created, when they forked, exec'd and ended, and how."""

from __future__ import annotations

from .._procfs import cmdline, comm


def new_process(pid: int, ppid: int | None, start_ns: int, name: str = "") -> dict[str, object]:
    """A process of the tree view: born (or first seen) at ``start_ns``, its execs, its end."""
    return {"pid": pid, "ppid": ppid, "start_ns": start_ns, "execs": [], "exit_ns": None, "exit_code": None,
            "comm": name or comm(pid), "cmdline": cmdline(pid)}


def tree_records(processes: dict[int, dict[str, object]], started_ns: int,
                 syscalls: dict[int, int]) -> list[dict[str, object]]:
    """The JSON form: times in seconds from the start of tracing, syscall totals per process, sorted by birth."""
    records = []
    for proc in sorted(processes.values(), key=lambda p: (p["start_ns"], p["pid"])):  # type: ignore[arg-type, return-value]
        code = proc["exit_code"]
        records.append({
            "pid": proc["pid"], "ppid": proc["ppid"], "comm": proc["comm"], "cmdline": proc["cmdline"],
            "start_s": round(max(0, proc["start_ns"] - started_ns) / 1e9, 6),  # type: ignore[operator]
            "execs": [{"at_s": round((e["ns"] - started_ns) / 1e9, 6), "cmdline": e["cmdline"]}
                      for e in proc["execs"]],  # type: ignore[attr-defined]
            "exit_s": None if proc["exit_ns"] is None else round((proc["exit_ns"] - started_ns) / 1e9, 6),  # type: ignore[operator]
            "exit_code": code if code is None or code >= 0 else None,  # type: ignore[operator]
            "signal": -code if code is not None and code < 0 else None,  # type: ignore[operator]
            "syscalls": syscalls.get(proc["pid"], 0),  # type: ignore[call-overload]
        })
    return records


def render_tree(records: list[dict[str, object]]) -> str:
    """The records drawn as a tree, children under their parent, in birth order."""
    import signal

    by_parent: dict[object, list[dict[str, object]]] = {}
    pids = {r["pid"] for r in records}
    for r in records:
        by_parent.setdefault(r["ppid"] if r["ppid"] in pids else None, []).append(r)
    lines = ["process tree (seconds from the start of tracing)"]

    def describe(r: dict[str, object]) -> str:
        parts = [f"{r['pid']} {r['cmdline'] or r['comm']}", f"start {r['start_s']:.3f}"]
        parts += [f"exec {e['at_s']:.3f}" for e in r["execs"]]  # type: ignore[attr-defined]
        if r["exit_s"] is not None:
            sig = r["signal"]
            name = signal.Signals(sig).name if sig in signal.valid_signals() else sig  # type: ignore[arg-type]
            how = f"exit {r['exit_code']}" if sig is None else f"killed by {name}"
            parts.append(f"{how} at {r['exit_s']:.3f}")
        else:
            parts.append("running")
        parts.append(f"{r['syscalls']} syscalls")
        return "  ".join(parts)

    def walk(r: dict[str, object], prefix: str, last: bool, root: bool) -> None:
        lines.append((prefix + ("└─ " if last else "├─ ") if not root else "") + describe(r))
        children = by_parent.get(r["pid"], [])
        for i, child in enumerate(children):
            walk(child, prefix + ("" if root else ("   " if last else "│  ")), i == len(children) - 1, False)

    for top in by_parent.get(None, []):
        walk(top, "", True, True)
    return "\n".join(lines)
