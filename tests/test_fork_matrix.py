"""The fork matrix: every primitive and policy, held by every kind of holder, across every way to fork.

Cells: ITEMS × HOLDERS × METHODS. Each (method, item) row runs in a fresh
interpreter (tests/helpers/fork_matrix.py); each cell asserts the documented
state in the child (README, "Fork-safe primitives": the table there), that the
child exited 0, and that it did not hang (15 s, then killed: a failure).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

# Each README "primitives" row is one item here (and the whole matrix runs under fork mode "allow"):
# readme: primitives / Lock
# readme: primitives / RLock
# readme: primitives / Condition
# readme: primitives / Semaphore
# readme: primitives / BoundedSemaphore
# readme: primitives / Event
# readme: primitives / ForkLocal
# readme: primitives / Service
# readme: primitives / feature context
# readme: primitives / tracked file
# readme: fork modes / allow
ITEMS = ("Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event_set", "Event_unset", "ForkLocal",
         "Service", "feature_context", "tracked_file")
HOLDERS = ("forking", "other", "nobody")  # the forking thread, another thread, no thread
METHODS = ("os.fork", "multiprocessing", "ProcessPoolExecutor", "libc fork", "non-main thread", "nested")
# Where the forking thread's code goes on in the child (its `with` blocks are open there);
# a multiprocessing child runs its target and exits instead.
RESUMES = {"os.fork", "libc fork", "non-main thread", "nested"}
DRIVER = ROOT / "tests" / "helpers" / "fork_matrix.py"


def run_row(method: str, item: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("FORKGUARD_")}
    try:
        proc = subprocess.run([sys.executable, str(DRIVER), method, item], capture_output=True, text=True,
                              timeout=300, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        return {"crashed": f"the parent itself hung (300 s):\n{exc.stdout}\n{exc.stderr}"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"crashed": f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"}
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def matrix() -> dict[tuple[str, str], dict]:
    """Every row, two at a time (the machine has two cores)."""
    rows = [(method, item) for method in METHODS for item in ITEMS]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(zip(rows, pool.map(lambda row: run_row(*row), rows), strict=True))


def expected(method: str, item: str, holder: str, child_pid: int) -> dict:
    """The documented state of ``item`` in the child, for this holder and way of forking."""
    held = holder == "forking" and method in RESUMES
    if item == "Lock":
        return {"free": not held, "free_after": True}
    if item == "RLock":
        return {"free": not held, "free_after": True}
    if item == "Condition":
        return {"free": not held, "free_after": True, "wait_returns": True}
    if item == "Semaphore":
        return {"permits": 2 if held else 3, "permits_after": 3}
    if item == "BoundedSemaphore":
        return {"permits": 2 if held else 3, "permits_after": 3, "bound_kept": True}
    if item == "Event_set":
        return {"set": True, "wait": True, "works": True}
    if item == "Event_unset":
        return {"set": False, "wait": False, "works": True}
    if item == "ForkLocal":
        return {"had_value": False, "value_pid": child_pid, "closed": False}
    if item == "Service":
        started = holder != "nobody"
        return {"threads": 1 if started else 0, "running": started, "ticked_here": started}
    if item == "feature_context":
        # nested: the second fork is made in the child, where another thread's context did not survive.
        late = holder == "forking" or (holder == "other" and method != "nested")
        return {"kind": "late" if late else "early", "enabled": holder == "nobody"}
    if item == "tracked_file":
        offset = {"forking": 2, "other": 4, "nobody": 0}[holder]
        return {"offset": offset, "read": "0123456789"[offset:offset + 3]}
    raise ValueError(item)


@pytest.mark.parametrize("holder", HOLDERS)
@pytest.mark.parametrize("item", ITEMS)
@pytest.mark.parametrize("method", METHODS)
def test_cell(matrix, method, item, holder):
    row = matrix[(method, item)]
    assert "crashed" not in row, row.get("crashed")
    cell = row[holder]
    assert cell["exit"] != "hung", f"{method} / {item} held by {holder}: the child hung"
    report = cell["report"]
    assert report is not None and "error" not in report, report
    seen = report["ok"]
    assert cell["exit"] == 0
    assert seen["generation"] == (2 if method == "nested" else 1)
    want = expected(method, item, holder, seen["pid"])
    assert {key: seen[key] for key in want} == want
    if item == "tracked_file":  # reopen: the child's reads never move the parent's offset
        assert cell["parent"]["offset"] == want["offset"]
