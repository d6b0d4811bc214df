"""One row of the fork matrix: ``python fork_matrix.py METHOD ITEM`` prints a JSON result per holder.

ITEM is a primitive (or a feature context, a tracked file), or a policy: a fork
mode (one fork under it, what the parent and child saw) or an exit mode
(children left sleeping, then this process exits; the test judges what is left).

For each holder (``forking``: the thread that forks holds the item or has the
state live; ``other``: another thread does; ``nobody``) it makes a fresh item,
arranges the holder, forks by METHOD, runs ``observe_in_child()`` in the new
process, and reports what the child saw, how it exited (or ``"hung"``), and
what the parent saw afterwards. tests/test_fork_matrix.py asserts the
documented state for every cell. Run in a fresh interpreter per row.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback

import forkguard

METHOD, ITEM = sys.argv[1], sys.argv[2]
TIMEOUT = 15.0  # a child that has not finished by then is reported as hung
FORK_CONTEXT = multiprocessing.get_context("fork")
ticks: list[int] = []  # pids in which a Service target ran


def make_item(item: str) -> object:
    """A fresh item of kind ``item``."""
    if item in ("Lock", "RLock", "Condition", "Event_set", "Event_unset"):
        return getattr(forkguard, item.split("_")[0])()
    if item in ("Semaphore", "BoundedSemaphore"):
        return getattr(forkguard, item)(3)
    if item == "ForkLocal":
        return forkguard.ForkLocal(lambda: [os.getpid()], close=lambda value: value.append("closed"))
    if item == "Service":
        return forkguard.Service(lambda: ticks.append(os.getpid()), interval=0.01, name="matrix-service")
    if item == "feature_context":
        return forkguard.Feature("matrix-feature")
    if item == "tracked_file":
        path = os.path.join(tempfile.mkdtemp(prefix="forkguard-matrix-"), "data")
        with open(path, "wb") as f:
            f.write(b"0123456789")
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 (lives as long as the row)
        forkguard.track(handle, "reopen")
        return handle
    raise ValueError(item)


class Holder:
    """Puts ``obj`` in its held/live state from the calling thread; ``let_go()`` undoes it."""

    def __init__(self, item: str, obj: object, reads: int = 2) -> None:
        self.item, self.obj, self.reads = item, obj, reads
        self.exits: list = []

    def hold(self) -> None:
        item, obj = self.item, self.obj
        if item in ("Lock", "Semaphore", "BoundedSemaphore"):
            obj.acquire()
            self.exits.append(obj.release)
        elif item == "RLock":
            obj.acquire()
            obj.acquire()  # two levels: the child must keep both
            self.exits += [obj.release, obj.release]
        elif item == "Condition":
            obj.acquire()
            self.exits.append(obj.release)
        elif item == "Event_set":
            obj.set()
        elif item == "Event_unset":
            obj.set()
            obj.clear()
        elif item == "ForkLocal":
            obj.get()
        elif item == "Service":
            obj.start()
            self.exits.append(obj.stop)
        elif item == "feature_context":
            ctx = obj.context()
            ctx.__enter__()
            self.exits.append(lambda: ctx.__exit__(None, None, None))
        elif item == "tracked_file":
            obj.read(self.reads)

    def let_go(self) -> None:
        while self.exits:
            self.exits.pop()()


def arrange_other_thread(item: str, obj: object) -> tuple[threading.Thread, threading.Event]:
    """Another thread puts the item in its held state and stays until told to go."""
    ready, done = threading.Event(), threading.Event()

    def run() -> None:
        holder = Holder(item, obj, reads=4)
        if item == "Event_unset":
            ready.set()
            obj.wait()  # blocked in wait() at the fork
            return
        holder.hold()
        if item == "Service":
            holder.exits.clear()  # started here; the thread ends, the service runs on
        ready.set()
        done.wait()
        holder.let_go()

    thread = threading.Thread(target=run, name="matrix-holder")
    thread.start()
    ready.wait()
    time.sleep(0.02)  # the holder is inside wait() / its with-block now
    return thread, done


# ---------------------------------------------------------------------------- what the child sees


def acquired_by_another_thread(obj: object) -> bool:
    box: list[bool] = []

    def attempt() -> None:
        got = obj.acquire(timeout=0.05)
        if got:
            obj.release()
        box.append(got)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return box[0]


def observe_in_child(item: str, obj: object, let_go) -> dict:  # type: ignore[no-untyped-def]
    """What the documented state looks like here. ``let_go``: where the forking thread's code goes on in this
    child, what closes its blocks (the item is released half-way); None in a child that never returns there."""
    info = forkguard.fork_info()
    seen: dict = {"pid": os.getpid(), "generation": info.generation, "kind": info.kind}
    if item == "Lock":
        seen["free"] = obj.acquire(blocking=False)
        if seen["free"]:
            obj.release()
        if let_go:
            let_go()  # the forker's `with` block closes here
        seen["free_after"] = obj.acquire(blocking=False)
        obj.release()
    elif item in ("RLock", "Condition"):
        seen["free"] = acquired_by_another_thread(obj)
        if item == "Condition":
            with obj:  # wait/notify with its inherited waiters gone
                seen["wait_returns"] = obj.wait(0.05) is False
                obj.notify_all()
        if let_go:
            let_go()
        seen["free_after"] = acquired_by_another_thread(obj)
    elif item in ("Semaphore", "BoundedSemaphore"):
        got = 0
        while got < 5 and obj.acquire(blocking=False):
            got += 1
        seen["permits"] = got
        for _ in range(got):
            obj.release()
        if let_go:
            let_go()
        again = 0
        while again < 5 and obj.acquire(blocking=False):
            again += 1
        seen["permits_after"] = again
        for _ in range(again):
            obj.release()
        if item == "BoundedSemaphore":
            try:
                obj.release()
                seen["bound_kept"] = False
            except ValueError:
                seen["bound_kept"] = True
    elif item.startswith("Event"):
        seen["set"] = obj.is_set()
        seen["wait"] = obj.wait(0.05)
        obj.set()
        seen["works"] = obj.wait(1) and obj.is_set()
        obj.clear()
    elif item == "ForkLocal":
        seen["had_value"] = obj.has_value
        value = obj.get()
        seen["value_pid"] = value[0]
        seen["closed"] = "closed" in value
    elif item == "Service":
        time.sleep(0.3)
        seen["threads"] = [t.name for t in threading.enumerate()].count("matrix-service")
        seen["running"] = obj.running
        seen["ticked_here"] = os.getpid() in ticks
    elif item == "feature_context":
        seen["enabled"] = obj.enabled
        seen["live"] = info.live_contexts
    elif item == "tracked_file":
        seen["offset"] = os.lseek(obj.fileno(), 0, os.SEEK_CUR)
        seen["read"] = obj.read(3).decode()
    return seen


# ---------------------------------------------------------------------------- how the process forks


def report_through(fd: int, body) -> None:  # type: ignore[no-untyped-def]
    try:
        out = {"ok": body()}
    except BaseException:
        out = {"error": traceback.format_exc()}
    os.write(fd, json.dumps(out).encode())


def wait_child(pid: int, read_fd: int) -> tuple[object, object]:
    """The child's report and exit code, or "hung" after TIMEOUT seconds (it is killed)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code: object = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            code = "hung"
            break
        time.sleep(0.005)
    data = b""
    os.set_blocking(read_fd, False)
    try:
        while chunk := os.read(read_fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    os.close(read_fd)
    return (json.loads(data) if data else None), code


CELL: dict = {}  # the current cell, for the pool worker (it runs a module-level function)


def cell_body() -> dict:
    return CELL["body"]()


def mp_entry(connection) -> None:  # type: ignore[no-untyped-def]
    try:
        connection.send({"ok": cell_body()})
    except BaseException:
        connection.send({"error": traceback.format_exc()})


def fork_os(fork, hold, let_go):  # type: ignore[no-untyped-def]
    """fork() by ``fork`` in the calling thread (which holds), child reports through a pipe."""
    read_fd, write_fd = os.pipe()
    hold()
    started = time.monotonic()
    pid = fork()
    if pid == 0:
        os.close(read_fd)
        forkguard.check_fork()  # a libc fork: forkguard's first touch (no-op after os.fork)
        report_through(write_fd, cell_body)
        os._exit(0)
    CELL["fork_seconds"] = time.monotonic() - started
    let_go()
    os.close(write_fd)
    return wait_child(pid, read_fd)


def fork_nested(hold, let_go):  # type: ignore[no-untyped-def]
    """os.fork, then the child forks again; the grandchild (generation 2) reports."""
    read_fd, write_fd = os.pipe()
    hold()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        grandchild = os.fork()
        if grandchild == 0:
            report_through(write_fd, cell_body)
            os._exit(0)
        let_go()  # the middle process's own blocks close
        done = time.monotonic() + TIMEOUT
        while not os.waitpid(grandchild, os.WNOHANG)[0]:
            if time.monotonic() > done:
                os.kill(grandchild, 9)
                os._exit(70)
            time.sleep(0.005)
        os._exit(0)
    CELL["fork_seconds"] = time.monotonic() - started
    let_go()
    os.close(write_fd)
    return wait_child(pid, read_fd)


def fork_multiprocessing(hold, let_go):  # type: ignore[no-untyped-def]
    receive, send = FORK_CONTEXT.Pipe(duplex=False)
    process = FORK_CONTEXT.Process(target=mp_entry, args=(send,))
    hold()
    started = time.monotonic()
    process.start()
    CELL["fork_seconds"] = time.monotonic() - started
    let_go()
    send.close()
    report = receive.recv() if receive.poll(TIMEOUT) else None
    process.join(TIMEOUT)
    if process.exitcode is None:
        process.kill()
        process.join()
        return report, "hung"
    return report, process.exitcode


def fork_pool(hold, let_go):  # type: ignore[no-untyped-def]
    executor = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=FORK_CONTEXT)
    hold()
    started = time.monotonic()
    future = executor.submit(cell_body)  # the worker is forked here, in this thread
    CELL["fork_seconds"] = time.monotonic() - started
    let_go()
    workers = list(executor._processes.values())
    try:
        report = {"ok": future.result(TIMEOUT)}
    except concurrent.futures.TimeoutError:
        for worker in workers:
            worker.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        return None, "hung"
    except Exception:
        report = {"error": traceback.format_exc()}
    executor.shutdown(wait=True)
    return report, max((abs(w.exitcode or 0) for w in workers), default=0)


def forker_for(method: str, hold, let_go):  # type: ignore[no-untyped-def]
    """A callable that forks by ``method`` (``hold`` just before, in the forking thread) and returns
    (the child's report, its exit code)."""
    if method == "os.fork":
        return lambda: fork_os(os.fork, hold, let_go)
    if method == "libc fork":
        return lambda: fork_os(ctypes.PyDLL(None).fork, hold, let_go)
    if method == "nested":
        return lambda: fork_nested(hold, let_go)
    if method == "multiprocessing":
        return lambda: fork_multiprocessing(hold, let_go)
    if method == "ProcessPoolExecutor":
        return lambda: fork_pool(hold, let_go)
    if method == "non-main thread":
        def fork() -> tuple[object, object]:
            box: list = []

            def run() -> None:
                try:
                    box.append(fork_os(os.fork, hold, let_go))
                except BaseException as exc:  # a denied fork: raise it in the caller
                    box.append(exc)

            thread = threading.Thread(target=run, name="forker")
            thread.start()
            thread.join()
            if isinstance(box[0], BaseException):
                raise box[0]
            return box[0]
        return fork
    raise ValueError(method)


def run_cell(holder: str) -> dict:
    obj = make_item(ITEM)
    other = arrange_other_thread(ITEM, obj) if holder == "other" else None
    forker_holder = Holder(ITEM, obj)
    hold = forker_holder.hold if holder == "forking" else (lambda: None)
    let_go = forker_holder.let_go
    resumes = METHOD in ("os.fork", "libc fork", "non-main thread", "nested")
    CELL.update(body=lambda: observe_in_child(ITEM, obj, let_go if holder == "forking" and resumes else None))
    if ITEM == "Event_set" and holder == "nobody":
        obj.set()  # set up front, by no thread in particular
    report, code = forker_for(METHOD, hold, let_go)()
    parent: dict = {}
    if ITEM == "tracked_file":
        parent["offset"] = os.lseek(obj.fileno(), 0, os.SEEK_CUR)
    if other is not None:
        thread, done = other
        if ITEM == "Event_unset":
            obj.set()
        done.set()
        thread.join(5)
    if ITEM == "Service":
        obj.stop()
    return {"report": report, "exit": code, "parent": parent}


# ---------------------------------------------------------------------------- policies


def run_fork_mode(mode: str) -> dict:
    """Fork once by METHOD under fork mode ``mode``: what the parent saw, and the child's report if any."""
    if mode == "wait_for_exit_exec":
        forkguard.set_fork_mode(mode, timeout=1.0)  # a pool worker never exits or execs: it returns after 1 s
        CELL["body"] = lambda: time.sleep(0.4) or {"slept": True}
    else:
        forkguard.set_fork_mode(mode)
        CELL["body"] = lambda: {"ran": True}
    try:
        report, code = forker_for(METHOD, lambda: None, lambda: None)()
        error = None
    except OSError as exc:
        report, code, error = None, None, exc.errno
    return {"report": report, "exit": code, "error": error, "fork_seconds": CELL.get("fork_seconds"),
            "warnings": forkguard.fork_info().fork_warnings}


SLEEP = {"seconds": 60.0, "markers": ""}


def quiet() -> None:
    """A child that may outlive the row must not hold the row's stdout and stderr open."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)


def sleeper() -> int:
    """Sleep, then leave a marker with the time this process finished."""
    quiet()
    time.sleep(SLEEP["seconds"])
    with open(os.path.join(SLEEP["markers"], str(os.getpid())), "w") as f:
        f.write(repr(time.time()))
    return os.getpid()


def sleeping_child(fork) -> int:  # type: ignore[no-untyped-def]
    pid = fork()
    if pid == 0:
        forkguard.check_fork()
        sleeper()
        os._exit(0)
    return pid


def spawn_sleepers() -> list[int]:
    """Children (and for nested a grandchild) made by METHOD that sleep; their pids."""
    if METHOD in ("os.fork", "libc fork"):
        return [sleeping_child(os.fork if METHOD == "os.fork" else ctypes.PyDLL(None).fork)]
    if METHOD == "non-main thread":
        box: list[int] = []
        thread = threading.Thread(target=lambda: box.append(sleeping_child(os.fork)))
        thread.start()
        thread.join()
        return box
    if METHOD == "nested":
        read_fd, write_fd = os.pipe()
        middle = os.fork()
        if middle == 0:
            os.write(write_fd, str(sleeping_child(os.fork)).encode())
            sleeper()
            os._exit(0)
        os.close(write_fd)
        return [middle, int(os.read(read_fd, 64))]
    if METHOD == "multiprocessing":
        process = FORK_CONTEXT.Process(target=sleeper)
        process.start()
        return [process.pid]
    if METHOD == "ProcessPoolExecutor":
        executor = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=FORK_CONTEXT)
        CELL["executor"] = executor  # kept: the pool shuts down at exit
        executor.submit(sleeper)
        return list(executor._processes)
    raise ValueError(METHOD)


def run_exit_mode(mode: str) -> None:
    """Leave sleeping children behind and exit: by SIGTERM under kill_children, normally under wait_for_children."""
    SLEEP["markers"] = tempfile.mkdtemp(prefix="forkguard-matrix-")
    if mode == "kill_children":
        forkguard.set_exit_mode(mode, grace=0.5)
    else:
        forkguard.set_exit_mode(mode, descendants=True, timeout=20, grace=0.5)
        SLEEP["seconds"] = 0.5
    pids = spawn_sleepers()
    print(json.dumps({"pids": pids, "markers": SLEEP["markers"]}), flush=True)
    if mode == "kill_children":
        os.kill(os.getpid(), signal.SIGTERM)  # the exit mode runs, then the process dies of SIGTERM
        time.sleep(30)
    sys.exit(0)  # wait_for_children: a normal exit waits for every descendant


if ITEM in ("warn", "deny", "wait_for_exit_exec"):
    print(json.dumps(run_fork_mode(ITEM)), flush=True)
    os._exit(0)
if ITEM in ("kill_children", "wait_for_children"):
    run_exit_mode(ITEM)
print(json.dumps({holder: run_cell(holder) for holder in ("forking", "other", "nobody")}))
sys.stdout.flush()
os._exit(0)  # nothing of this row must outlive it (services, pools)
