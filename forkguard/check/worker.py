"""The fresh interpreter a check runs its TARGET in, and the private channel it reports over.

The worker is started by :func:`start` under the supervisor (see
``supervise.py``), isolated with ``python -I``. It reports JSON lines on a
pipe of its own (``FORKGUARD_REPORT_FD``), never on stdout: whatever the
target prints goes to the captured output, which the check summarises.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .supervise import STACK_HOOK, Supervised, python_command
from .target import Target, TargetError


class Channel:
    """The worker's end of the report pipe: one JSON object a line, closed on exec and gone from the environment."""

    def __init__(self) -> None:
        fd = int(os.environ.pop("FORKGUARD_REPORT_FD"))
        os.set_inheritable(fd, False)  # a command the target runs must not write here
        self.fd = fd

    def send(self, **message: Any) -> None:
        data = json.dumps(message).encode() + b"\n"
        while data:
            data = data[os.write(self.fd, data):]


def start(check: str, target: Target, options: dict[str, Any]) -> Supervised:
    """A worker running ``check`` on ``target`` under the supervisor, with Python stacks on SIGUSR1."""
    config = {"check": check, "target": target.to_dict(), "options": options}
    return Supervised(python_command("forkguard.check.worker", "main", config), report=True, stacks=True,
                      label=f"forkguard check {check} worker ({target.spec})")


def crashed(run: Supervised) -> dict[str, Any]:
    """A worker killed by a signal: the signal and the Python stacks faulthandler wrote as it died."""
    import signal

    from .supervise import python_frames

    try:
        with open(os.path.join(run.stack_dir or "", f"{run.pid}.fatal")) as f:
            python_stack = python_frames(f.read(1 << 20))
    except OSError:
        python_stack = []
    return {"signal": signal.Signals(-(run.exit_code or 0)).name, "python_stack": python_stack,
            "hint": "call TARGET from a script and run `forkguard check crash -- python script.py` for the "
                    "native stack"}


def hung(run: Supervised, timeout: float) -> dict[str, Any]:
    """A worker that made no progress for ``timeout`` s: every process's Python and native stacks."""
    from dataclasses import asdict

    return {"timeout": timeout, "processes": [asdict(p) for p in run.take_stacks()]}


def main(config: dict[str, Any]) -> int:
    """The worker's body: the check's function, and one "error" line when TARGET cannot run."""
    import faulthandler

    channel = Channel()
    stack_dir = os.environ.get("FORKGUARD_STACK_DIR", "")
    if stack_dir:
        exec(compile(STACK_HOOK, "<forkguard stack hook>", "exec"), {})
        del os.environ["FORKGUARD_STACK_DIR"]  # the target's own commands have no business with it
        # A fatal signal (SIGSEGV in the target) dumps the Python stacks where the checker reads them.
        fatal = open(os.path.join(stack_dir, f"{os.getpid()}.fatal"), "w")  # noqa: SIM115 (kept open until exit)
        faulthandler.enable(file=fatal, all_threads=True)
    target = Target(**config["target"])
    if config["check"] == "leaks":
        from .leaks import worker
    elif config["check"] == "fork":
        from .forkstress import worker
    else:
        from .memray import worker
    try:
        worker(target, config["options"], channel)
    except TargetError as exc:
        channel.send(error=str(exc))
        return 2
    except Exception as exc:
        channel.send(error=f"{target.spec} raised {type(exc).__name__}: {exc}")
        return 2
    return 0
