"""Inherited files and sockets, fork-safe locks and per-process values, side by side with POSIX.

    python examples/inherited.py
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

import forkguard


def fork(child) -> None:
    """Run ``child()`` in a forked process and wait for it."""
    pid = os.fork()
    if pid == 0:
        child()
        os._exit(0)
    os.waitpid(pid, 0)


with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "data")
    with open(path, "wb") as f:
        f.write(b"0123456789")

    print("1. a file read by parent and child (the parent has read 2 bytes)", flush=True)
    for policy in ("share", "reopen"):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 2)
        forkguard.track(fd, policy)
        fork(lambda fd=fd: os.read(fd, 3))  # the child reads 3 bytes
        print(f"   {policy:<6}: the parent reads next {os.read(fd, 3).decode()!r}", flush=True)
        forkguard.untrack(fd)
        os.close(fd)

    print("2. buffered output pending at the fork, then closed by both", flush=True)
    for tracked in (False, True):
        out_path = os.path.join(tmp, f"out-{tracked}")
        out = open(out_path, "w")  # noqa: SIM115 (open across the fork, closed by both processes)
        out.write("hello\n")
        if tracked:
            forkguard.track(out)  # flushed before the fork
        fork(out.close)
        out.close()
        with open(out_path) as result:
            print(f"   {'tracked' if tracked else 'untracked'}: the file holds {result.read()!r}", flush=True)

def hold(lock, held: threading.Event, release: threading.Event) -> None:
    """A worker thread that holds ``lock`` until told to let go."""
    with lock:
        held.set()
        release.wait()


print("3. a lock held by another thread at the fork", flush=True)
for name, lock in (("threading.Lock", threading.Lock()), ("forkguard.Lock", forkguard.Lock())):
    held, release = threading.Event(), threading.Event()
    worker = threading.Thread(target=hold, args=(lock, held, release))
    worker.start()
    held.wait()
    fork(lambda name=name, lock=lock: print(f"   {name}: the child acquires it: {lock.acquire(timeout=0.5)}",
                                            flush=True))
    release.set()
    worker.join()

print("4. a per-process value", flush=True)
made_in = forkguard.ForkLocal(os.getpid)
print(f"   parent {os.getpid()} sees {made_in.get()}", flush=True)
fork(lambda: print(f"   child  {os.getpid()} sees {made_in.get()}", flush=True))

print("5. what doctor says about a process with a listening socket and a busy thread", flush=True)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
threading.Thread(target=time.sleep, args=(1,), daemon=True).start()
for hazard in forkguard.doctor()["hazards"]:
    if "listens" in hazard or "threads" in hazard:
        print(f"   - {hazard}", flush=True)
