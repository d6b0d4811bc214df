"""``forkguard doctor [-p PID] [--json]``: the fork hazards of a process, as a table or JSON."""

from __future__ import annotations

import argparse
import json

from .. import _doctor
from . import ForkguardError


class DoctorCommand:
    name = "doctor"
    help = "show what could go wrong if a process forked now (threads, locks, descriptors, sockets)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-p", "--pid", type=int, help="the process to examine (default: this command's own "
                            "process; an application sees its full state with forkguard.doctor())")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        try:
            report = _doctor.doctor(args.pid)
        except ProcessLookupError:
            raise ForkguardError(f"no process {args.pid}: check the pid (ps -ef, pgrep)") from None
        except PermissionError:
            raise ForkguardError(f"not allowed to read /proc/{args.pid}: run as its user or as root") from None
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print(render(report))
        return 0


def render(report: dict) -> str:
    """The report as the tables a person reads."""
    lines = [f"process {report['pid']}: {report['command']}", "", "threads"]
    for thread in report["threads"]:
        holds = f"  holds {', '.join(thread['holds'])}" if thread["holds"] else ""
        lines.append(f"  {thread['tid']:>8}  {thread['name']}{holds}")
    lines += ["", "descriptors", f"  {'fd':>4}  {'kind':<8} {'cloexec':<8} {'flags':<12} {'offset':>8}  target"]
    for fd in report["descriptors"]:
        target = fd["target"]
        if fd["socket"]:
            sock = fd["socket"]
            target = f"{sock['family']} {sock['type']} {sock['state']} {sock['local']}" + (
                f" -> {sock['remote']}" if sock.get("remote") and sock["state"] != "listening" else "")
        offset = "" if fd["offset"] is None else str(fd["offset"])
        lines.append(f"  {fd['fd']:>4}  {fd['kind']:<8} {'yes' if fd['cloexec'] else 'NO':<8} {fd['flags']:<12} "
                     f"{offset:>8}  {target}")
    if report["own_process"]:
        lines += ["", f"fork mode {report['fork_mode']['mode']}, exit mode {report['exit_mode']['mode']}, "
                  f"inherit preset {report['inherit_preset']}"]
        for title, rows in (("tracked", [f"fd {t['fd']} {t['kind']}: {t['policy']}  {t['description']}"
                                         for t in report["tracked"]]),
                            ("hooks", report["hooks"]),
                            ("features", [f"{f['name']}: {'enabled' if f['enabled'] else 'disabled'} "
                                          f"(late_fork={f['late_fork']})" for f in report["features"]])):
            lines += ["", title] + [f"  {row}" for row in rows or ["(none)"]]
    lines += ["", "hazards"] + [f"  - {h}" for h in report["hazards"] or ["none found"]]
    return "\n".join(lines)
