"""Every bad `forkguard check` input: one line naming the option and what it accepts, exit 2, nothing left behind.

"Nothing left behind": no traceback, no file in the working directory or the
temporary directory (TMPDIR is a fresh one per case), and no process started
by the command still running (each run is marked in its environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import ROOT

SECONDS = "must be a number of seconds > 0 and <= 86400"


def whole(low: int, high: int) -> str:
    return f"must be a whole number from {low} to {high}"


# (arguments after `forkguard check`, a fragment of the one line expected on stderr)
CASES = [
    # the check itself
    ([], "give a check: leaks, memray, valgrind, crash, hang or fork"),
    (["bogus"], "argument CHECK: invalid choice: 'bogus'"),
    (["leaks", "target:f", "--bogus"], "unrecognized arguments: --bogus"),
    # TARGET (parsed once, in forkguard.check.target, for leaks, memray and fork)
    (["leaks"], "give a TARGET: give module:function, path/to/file.py:function or a script path"),
    (["memray"], "give a TARGET: give module:function"),
    (["fork"], "give a TARGET: give module:function"),
    (["leaks", ""], "TARGET is empty: give module:function"),
    (["leaks", "   "], "TARGET is empty"),
    (["leaks", "target.py:"], "TARGET 'target.py:' has nothing after ':'"),
    (["leaks", ":f"], "TARGET ':f' has nothing before ':'"),
    (["leaks", ":"], "TARGET ':' has nothing after ':'"),
    (["leaks", "target:not-a-name"], "'not-a-name' is not a function name"),
    (["leaks", "target:1f"], "'1f' is not a function name"),
    (["leaks", "no..module:f"], "'no..module' is not a module name"),
    (["leaks", "sp ace:f"], "'sp ace' is not a module name"),
    (["leaks", "missing.py"], "no file 'missing.py'"),
    (["leaks", "missing/file.py:f"], "no file 'missing/file.py'"),
    (["leaks", "."], "'.' is not a regular file"),
    (["leaks", "/dev/null"], "'/dev/null' is not a regular file"),
    (["leaks", "/dev/null:f"], "'/dev/null' is not a regular file"),
    (["fork", "/tmp:f"], "'/tmp' is not a regular file"),
    (["memray", "target.py:", "-o", "/dev/null"], "has nothing after ':'"),
    (["leaks", "tärget:f", "--budget", "1"], "cannot import 'tärget'"),   # valid Python: looked up, not refused
    # TARGET found only by the worker: still one line, exit 2
    (["leaks", "target:nope", "--budget", "1"], "has no function 'nope'"),
    (["leaks", "no_such_module:f", "--budget", "1"], "cannot import 'no_such_module'"),
    (["leaks", "target:not_callable", "--budget", "1"], "target:not_callable is not callable"),
    (["leaks", "target:raises", "--budget", "1"], "target:raises raised RuntimeError: boom"),
    (["fork", "target:raises"], "raised RuntimeError: boom (before any fork)"),
    # numbers (forkguard.check.options)
    *[(["leaks", "target:f", option, value], f"argument {option}: {SECONDS}")
      for option in ("--budget", "--timeout")
      for value in ("0", "-1", "inf", "nan", "1e300", "86401", "abc", "", "1,5", "²")],
    *[(["fork", "target:f", "--timeout", value], f"argument --timeout: {SECONDS}") for value in ("0", "inf", "nan")],
    *[([check, "--timeout", value, "--", "true"], f"argument --timeout: {SECONDS}")
      for check in ("crash", "hang", "valgrind") for value in ("0", "-5", "inf", "nan", "1e9")],
    (["memray", "target:f", "--timeout", "inf"], f"argument --timeout: {SECONDS}"),
    *[(["fork", "target:f", "--forks", value], f"argument --forks: {whole(1, 10000)}")
      for value in ("0", "-1", "10001", "2.5", "x", str(2**63), "")],
    *[(["memray", "target:f", "--calls", value], f"argument --calls: {whole(1, 10**9)}")
      for value in ("0", "-3", str(2**63), "1e3", "many")],
    *[(["memray", "target:f", "--top", value], f"argument --top: {whole(1, 1000)}") for value in ("0", "1001")],
    *[(["memray", "target:f", "--min-bytes", value], f"argument --min-bytes: {whole(0, 2**62)}")
      for value in ("-1", str(2**63), "1.5")],
    # files (forkguard._output, checked before anything runs)
    (["leaks", "target:f", "--plot", "rounds.txt"], "--plot: give FILE.png, FILE.svg or FILE.pdf"),
    (["leaks", "target:f", "--plot", "missing/dir/r.png"], "directory"),
    (["leaks", "target:f", "--plot", "target.py/r.png"], "cannot write target.py/r.png: Not a directory"),
    (["leaks", "target:f", "--plot", "adir.png"], "it is a directory"),
    (["leaks", "target:f", "--plot", "-", "--json"], "--plot - and --json would both write to stdout"),
    (["memray", "target:f", "-o", "adir.png"], "it is a directory"),
    (["memray", "target:f", "-o", "missing/leaks.html"], "does not exist"),
    (["memray", "target:f", "-o", ""], "an output path must be a non-empty string"),
    (["memray", "target:f", "-o", "target.py/leaks.html"], "cannot write target.py/leaks.html: Not a directory"),
    (["memray", "target:f", "--capture", "adir.png"], "it is a directory"),
    # commands
    *[([check], f"put the command after --: forkguard check {check}") for check in ("crash", "hang", "valgrind")],
    *[([check, "true"], "put the command after --") for check in ("crash", "hang", "valgrind")],
    *[([check, "--"], f"give a command after --: forkguard check {check}") for check in ("crash", "hang", "valgrind")],
    (["crash", "--", ""], "'': command not found"),
    (["hang", "--", "no-such-command-xyz"], "'no-such-command-xyz': command not found"),
    (["valgrind", "--", "./missing-binary"], "'./missing-binary': command not found"),
    (["crash", "--", "/tmp"], "'/tmp': command not found"),
    # --user (forkguard._user)
    *[([check, "--user", user, "--", "true"], message)
      for check in ("crash", "hang", "valgrind")
      for user, message in (("", "--user: give a user name or a numeric uid"),
                            ("no-such-user-xyz", "--user 'no-such-user-xyz': no such user"),
                            ("4294967296", "--user '4294967296': no such user"))],
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    (work / "target.py").write_text("def f(): pass\ndef raises(): raise RuntimeError('boom')\nnot_callable = 42\n")
    (work / "adir.png").mkdir()
    return work


def left_running(mark: str) -> list[int]:
    """Processes whose environment carries ``mark``: what the command started and left behind."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mark.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a) or "(none)" for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(workdir: Path, tmp_path: Path, args: list[str],
                                                         message: str | None) -> None:
    mark = f"FORKGUARD_TEST_MARK_{uuid.uuid4().hex}"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    before = sorted(p.name for p in workdir.iterdir())
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{workdir}", "TMPDIR": str(tmpdir), mark: "1"}
    proc = subprocess.run([sys.executable, "-m", "forkguard", "check", *args], capture_output=True, text=True,
                          cwd=workdir, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("forkguard"), proc.stderr
    if message is not None:
        assert message in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in workdir.iterdir()) == before
    assert list(tmpdir.iterdir()) == []
    assert left_running(mark) == []


def test_the_python_api_refuses_bad_values_with_typed_errors(workdir: Path) -> None:
    from forkguard.check import TargetError, crash, fork_stress, hang, leaks, valgrind
    from forkguard.check.memray import memray_check

    for call, error in [
        (lambda: leaks("target:f", budget=0), ValueError), (lambda: leaks("target:f", budget="5"), TypeError),
        (lambda: leaks("target:f", timeout=float("nan")), ValueError), (lambda: leaks(None), TargetError),
        (lambda: leaks("x.py:"), TargetError), (lambda: fork_stress("target:f", forks=True), TypeError),
        (lambda: fork_stress("target:f", forks=0), ValueError),
        (lambda: memray_check("target:f", "/dev/null", calls=2**63), ValueError),
        (lambda: hang(["true"], timeout=float("inf")), ValueError), (lambda: crash(["true"], user=""), ValueError),
        (lambda: valgrind(["true"], timeout=-1), ValueError),
    ]:
        with pytest.raises(error):
            call()
