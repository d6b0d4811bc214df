"""The fork matrix: every primitive and policy, held by every kind of holder, across every way to fork.

Cells: ITEMS × HOLDERS × METHODS (198) and POLICIES × METHODS (30). Each
(method, item) row runs in a fresh interpreter (tests/helpers/fork_matrix.py);
each cell asserts the documented state (README: the primitives table and the
fork and exit mode tables), that the child exited 0, and that it did not hang
(15 s, then killed: a failure).
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import signal
import subprocess
import sys
import time

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
POLICIES = ("warn", "deny", "wait_for_exit_exec", "kill_children", "wait_for_children")
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
    ended = time.time()
    lines = proc.stdout.strip().splitlines()
    expected_rc = -signal.SIGTERM if item == "kill_children" else 0
    if proc.returncode != expected_rc or not lines:
        return {"crashed": f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"}
    row = json.loads(lines[-1])
    if item in ("kill_children", "wait_for_children"):
        row.update(ended=ended, left=left_running(row["pids"]), finished=finish_times(row["markers"]))
    return row


def left_running(pids: list[int]) -> list[int]:
    """Which of ``pids`` still run a moment later (a zombie waiting for init to reap it has ended); killed here."""
    def running(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(running(pid) for pid in pids):
        time.sleep(0.05)
    left = [pid for pid in pids if running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def finish_times(markers: str) -> dict[str, float]:
    return {name: float(open(os.path.join(markers, name)).read()) for name in os.listdir(markers)}


@pytest.fixture(scope="module")
def matrix() -> dict[tuple[str, str], dict]:
    """Every row, two at a time (the machine has two cores)."""
    rows = [(method, item) for method in METHODS for item in ITEMS + POLICIES]
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


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", METHODS)
def test_policy_cell(matrix, method, policy):
    # readme: fork modes / warn
    # readme: fork modes / deny
    # readme: fork modes / wait_for_exit_exec
    # readme: exit modes / kill_children
    # readme: exit modes / wait_for_children
    row = matrix[(method, policy)]
    assert "crashed" not in row, row.get("crashed")
    python_fork = method != "libc fork"  # fork modes act on forks Python makes (README: "does not cover")
    if policy == "deny":
        if python_fork:
            assert row["error"] == errno.ENOTSUP and row["report"] is None, row
        else:
            assert row["error"] is None and row["report"] == {"ok": {"ran": True}}, row
    elif policy == "warn":
        assert row["report"] == {"ok": {"ran": True}} and row["exit"] == 0, row
        assert row["warnings"] == (1 if python_fork else 0), row
    elif policy == "wait_for_exit_exec":
        assert row["report"] == {"ok": {"slept": True}} and row["exit"] == 0, row
        if method == "ProcessPoolExecutor":  # a pool worker neither execs nor exits: the timeout (1 s) ends the wait
            assert row["fork_seconds"] >= 0.9, row
        elif python_fork:  # the fork returned only once the child (sleeping 0.4 s) had exited
            assert row["fork_seconds"] >= 0.35, row
        else:
            assert row["fork_seconds"] < 0.3, row
    elif policy == "kill_children":  # the parent died of SIGTERM: its exit mode ran first
        assert row["left"] == [], f"left running: {row['left']}"
    else:  # wait_for_children: every descendant finished before the parent ended
        assert row["left"] == [] and sorted(map(int, row["finished"])) == sorted(row["pids"]), row
        assert max(row["finished"].values()) <= row["ended"], row
