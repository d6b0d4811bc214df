"""Memcheck on a command, with CPython's noise taken out: only losses that reach non-interpreter code count.

The command runs under ``valgrind --tool=memcheck --leak-check=full`` with
``PYTHONMALLOC=malloc`` (so Python's own allocator does not hide blocks) and
the suppression file shipped beside this module. A loss counts when one frame
of its stack lies outside the interpreter, libc and the loader: an extension
module, a ctypes-loaded library.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

SUPPRESSIONS = os.path.join(os.path.dirname(__file__), "python.supp")
LEAK_KINDS = ("Leak_DefinitelyLost", "Leak_IndirectlyLost", "Leak_PossiblyLost")
# Objects whose frames are the interpreter's own, not the code under test.
INTERPRETER = re.compile(r"(/python3(\.\d+)?$|/libpython|/libc\.so|/libc-|/ld-linux|/libm\.so|/libffi|"
                         r"/vgpreload_|/libpthread|/_ctypes|\.cpython-\d+.*?/(lib-dynload)/)")


@dataclass
class Loss:
    kind: str
    bytes: int
    blocks: int
    stack: list[str] = field(default_factory=list)


@dataclass
class ValgrindReport:
    command: list[str]
    exit_code: int
    losses: list[Loss]
    ignored: int  # losses inside the interpreter only (CPython's noise)

    @property
    def leaking(self) -> bool:
        return bool(self.losses)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "leaking": self.leaking}


def valgrind(command: list[str], timeout: float = 900) -> ValgrindReport:
    """Run ``command`` under memcheck and return the losses that reach non-interpreter code."""
    from . import CheckError

    binary = shutil.which("valgrind")
    if binary is None:
        raise CheckError("valgrind is not installed: apt-get install valgrind (or your system's package)")
    if not command or shutil.which(command[0]) is None:
        raise CheckError(f"{command[0] if command else 'COMMAND'!r}: command not found")
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = os.path.join(tmp, "memcheck.xml")
        proc = subprocess.run([binary, "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite,indirect",
                               "--errors-for-leak-kinds=definite,indirect", f"--suppressions={SUPPRESSIONS}",
                               "--xml=yes", f"--xml-file={xml_path}", "--num-callers=30", *command],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONMALLOC": "malloc"})
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, FileNotFoundError):
            raise CheckError(f"valgrind produced no report: {proc.stderr.strip().splitlines()[-1:]}") from None
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
        if outside:
            losses.append(Loss(kind, size, blocks, stack))
        else:
            ignored += 1
    losses.sort(key=lambda loss: -loss.bytes)
    return ValgrindReport(command, proc.returncode, losses, ignored)
