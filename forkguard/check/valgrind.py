"""Memcheck on a command, with CPython's noise taken out: only losses that reach non-interpreter code count.

The command runs under ``valgrind --tool=memcheck --leak-check=full`` with
``PYTHONMALLOC=malloc`` (so Python's own allocator does not hide blocks) and
the suppression file shipped beside this module. A loss counts when one frame
of its stack lies outside the interpreter, libc and the loader: an extension
module, a ctypes-loaded library. A definite loss's own bytes are counted; the
blocks it points to are counted once, in their own "indirectly lost" record
(valgrind's definite record adds them to its total as well).

Valgrind writes its XML to a descriptor of an unnamed file the checker made,
so the command may run as another user (``--user``) without a file to share.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any

from .crash import HangReport, check_command, hang_report, user_option
from .options import seconds
from .supervise import Supervised

SUPPRESSIONS = os.path.join(os.path.dirname(__file__), "python.supp")
LEAK_KINDS = ("Leak_DefinitelyLost", "Leak_IndirectlyLost", "Leak_PossiblyLost")
# Objects whose frames are the interpreter's own, not the code under test.
INTERPRETER = re.compile(r"(/python3(\.\d+)?$|/libpython|/libc\.so|/libc-|/ld-linux|/libm\.so|/libffi|"
                         r"/vgpreload_|/libpthread|/_ctypes|\.cpython-\d+.*?/(lib-dynload)/)")
_DIRECT = re.compile(r"\((\d[\d,]*) direct, (\d[\d,]*) indirect\)")


@dataclass
class Loss:
    kind: str
    bytes: int  # this record's own bytes (a definite loss's direct bytes)
    blocks: int
    indirect_bytes: int = 0  # what a definite loss points to: counted in its Leak_IndirectlyLost record
    stack: list[str] = field(default_factory=list)


@dataclass
class ValgrindReport:
    command: list[str]
    exit_code: int | None
    seconds: float
    losses: list[Loss]
    ignored: int  # losses inside the interpreter only (CPython's noise)
    user: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    hang: HangReport | None = None

    @property
    def leaked_bytes(self) -> int:
        return sum(loss.bytes for loss in self.losses)

    @property
    def leaking(self) -> bool:
        return bool(self.losses)

    @property
    def found(self) -> bool:
        return self.leaking or self.hang is not None

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "leaking": self.leaking, "leaked_bytes": self.leaked_bytes}


def valgrind(command: list[str], timeout: float = 900.0, user: str | None = None) -> ValgrindReport:
    """Run ``command`` under memcheck and return the losses that reach non-interpreter code."""
    from . import CheckError

    binary = shutil.which("valgrind")
    if binary is None:
        raise CheckError("valgrind is not installed: apt-get install valgrind (or your system's package)")
    check_command(command, "valgrind")
    timeout = seconds(timeout, "timeout")
    run_as = user_option(user)
    start = time.monotonic()
    with tempfile.TemporaryFile() as xml_file:
        fd = xml_file.fileno()
        memcheck = [binary, "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite,indirect",
                    "--errors-for-leak-kinds=definite,indirect", f"--suppressions={SUPPRESSIONS}", "--xml=yes",
                    f"--xml-fd={fd}", "--num-callers=30", *command]
        with Supervised(memcheck, env={**os.environ, "PYTHONMALLOC": "malloc"}, run_as=run_as, stacks=True,
                        hook=True, pass_fds=(fd,)) as run:
            code = run.wait(timeout)
            if code is None:
                hang = hang_report(run, command, start, timeout, run_as, native=False)
                return ValgrindReport(command, None, time.monotonic() - start, [], 0, run_as and run_as.name,
                                      hang.output, hang)
        xml_file.seek(0)
        try:
            root = ET.fromstring(xml_file.read())
        except ET.ParseError:
            raise CheckError(f"valgrind produced no report: {run.stderr.text().strip().splitlines()[-1:]}") from None
    losses, ignored = _losses(root)
    return ValgrindReport(command, code, time.monotonic() - start, losses, ignored, run_as and run_as.name,
                          {"stdout": run.stdout.summary(), "stderr": run.stderr.summary()})


def _losses(root: ET.Element) -> tuple[list[Loss], int]:
    losses, ignored = [], 0
    for error in root.iter("error"):
        kind = error.findtext("kind", "")
        if kind not in LEAK_KINDS:
            continue
        frames = error.find("stack")
        stack, outside = [], False
        for frame in frames.iter("frame") if frames is not None else []:
            obj, fn = frame.findtext("obj", ""), frame.findtext("fn", "??")
            where = f"{frame.findtext('file')}:{frame.findtext('line')}" if frame.findtext("file") else obj
            stack.append(f"{fn} ({where})")
            if obj and not INTERPRETER.search(obj) and "valgrind" not in obj:
                outside = True
        what = error.find("xwhat")
        size = int(what.findtext("leakedbytes", "0")) if what is not None else 0
        blocks = int(what.findtext("leakedblocks", "0")) if what is not None else 0
        split = _DIRECT.search(what.findtext("text", "")) if what is not None else None
        direct, indirect = (int(split[1].replace(",", "")), int(split[2].replace(",", ""))) if split else (size, 0)
        if outside:
            losses.append(Loss(kind, direct, blocks, indirect, stack))
        else:
            ignored += 1
    losses.sort(key=lambda loss: -loss.bytes)
    return losses, ignored
