"""The project's own promises: README commands match CI, the CLI answers, the example runs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_python


def readme_commands() -> list[str]:
    """The shell commands in README.md's fenced ``sh`` blocks, in order."""
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_install_and_test_commands_and_ci_runs_the_test_command():
    install, test = readme_commands()[:2]
    assert "pip install" in install and "examples/" in install
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines, f"{test!r} is not run verbatim by .ci/run"
    assert ci_lines[-1] == test, ".ci/run must end with README's test command (its exit code is CI's)"


def test_cli_version_help_and_module_entry_point():
    import forkguard

    version = subprocess.run([sys.executable, "-m", "forkguard", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"forkguard {forkguard.__version__}"
    bare = subprocess.run([sys.executable, "-m", "forkguard"], capture_output=True, text=True)
    assert bare.returncode == 2 and "usage: forkguard" in bare.stderr
    unknown = subprocess.run([sys.executable, "-m", "forkguard", "frobnicate"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_example_shows_early_late_and_libc_forks():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "early_late.py")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"generation 1, early fork, seen by os.fork, live contexts \{\}: native is enabled", out)
    assert re.search(r"late fork, seen by os.fork, live contexts \{'native': 1\}: native is disabled", out)
    assert re.search(r"early fork, seen by check_fork, .*native is enabled", out)
    assert "on_late_fork: dropping inherited native state" in out
    assert out.strip().endswith("native is still enabled")


def test_readme_libc_fork_snippet_runs():
    snippet = re.search(r"```python\nimport ctypes, os, forkguard\n(.+?)```", (ROOT / "README.md").read_text(), re.S)
    assert snippet, "README lost its check_fork example"
    run_python("import ctypes, os, forkguard\n" + snippet.group(1))


def test_readme_environment_table_lists_every_variable_with_its_run_option():
    from forkguard import _policy

    readme = (ROOT / "README.md").read_text()
    for option in _policy.ENV_OPTIONS:
        assert f"| `{option.variable}` (`{option.flag}" in readme, option.variable
    for variable in ("FORKGUARD_STRICT_HOOKS", "FORKGUARD_FORK_DETECTION"):
        assert f"| `{variable}`" in readme


def test_inherited_example_contrasts_posix_and_forkguard():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "inherited.py")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("share : the parent reads next '567'", "reopen: the parent reads next '234'",
                 "untracked: the file holds 'hello\\nhello\\n'", "tracked: the file holds 'hello\\n'",
                 "threading.Lock: the child acquires it: False", "forkguard.Lock: the child acquires it: True"):
        assert line in out, line
    parent, child = re.findall(r"(?:parent|child) +(\d+) sees (\d+)", out)
    assert parent[0] == parent[1] and child[0] == child[1] and parent[0] != child[0]


@pytest.mark.tools
def test_readme_check_example_verdicts():
    """README's `forkguard check leaks` examples: the native leak is found, the bounded cache is not a leak."""
    for target, expect in (("examples/leaky.py:leak_native", 1), ("examples/leaky.py:cached", 0)):
        proc = subprocess.run([sys.executable, "-m", "forkguard", "check", "leaks", target, "--budget", "6"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == expect, proc.stdout + proc.stderr
        assert ("verdict: LEAK: RSS +" in proc.stdout) == (expect == 1)


def readme_table_rows() -> dict[str, list[str]]:
    """Rows of every README table marked ``<!-- table: NAME -->``, by name: the first cell, without backticks
    and without what follows " (" (`share` (default, preset `posix`) is "share")."""
    tables: dict[str, list[str]] = {}
    lines = (ROOT / "README.md").read_text().splitlines()
    for i, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- table: (.+) -->", line.strip())
        if marker:
            rows = tables.setdefault(marker.group(1), [])
            for row in lines[i + 3:]:
                if not row.startswith("|"):
                    break
                rows.append(row.split("|")[1].replace("`", "").split(" (")[0].strip())
    return tables


def test_every_readme_table_row_is_proved_by_a_test_that_names_it():
    """A row of a marked README table (primitives, policies) needs a test carrying `# readme: TABLE / ROW`."""
    tables = readme_table_rows()
    assert {"primitives", "fork modes", "exit modes", "inherited resources"} <= set(tables)
    named = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        named |= set(re.findall(r"# readme: (.+?) / (.+)", path.read_text()))
    missing = [(table, row) for table, rows in tables.items() for row in rows if (table, row) not in named]
    assert not missing, f"README table rows no test names (add `# readme: TABLE / ROW` to the test): {missing}"
