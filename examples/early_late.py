"""Early and late forks, side by side: what forkguard decides in each child.

A "native" feature (think: an APM agent's C extension) is created in the parent.
1. A worker forked before any request (early fork, like gunicorn's) keeps it and
   re-initialises it.
2. A child forked while a request is live in *another thread* (late fork, like
   multiprocessing from a request handler) gets it disabled.
3. A child forked through libc fork() (as C code would) is still caught.

    python examples/early_late.py
"""

from __future__ import annotations

import ctypes
import os
import threading

import forkguard

native = forkguard.Feature(
    "native",
    on_early_fork=lambda: print(f"  [{os.getpid()}] on_early_fork: fresh native state for this worker", flush=True),
    on_late_fork=lambda: print(f"  [{os.getpid()}] on_late_fork: dropping inherited native state", flush=True),
)


def show(title: str, fork=os.fork) -> None:
    """Fork, print what the child sees, wait for it."""
    print(title, flush=True)
    pid = fork()
    if pid == 0:
        forkguard.check_fork()  # runs the child step now if C code did the fork
        info = forkguard.fork_info()
        state = "enabled" if native.enabled else f"disabled ({native.disabled_reason})"
        print(f"  [{info.pid}] generation {info.generation}, {info.kind} fork, "
              f"seen by {info.detected_by}, live contexts {info.live_contexts}: native is {state}", flush=True)
        os._exit(0)
    os.waitpid(pid, 0)


show("1. fork with no request in flight:")

request_started, request_done = threading.Event(), threading.Event()


def serve_request() -> None:
    with native.context():  # the request's native state is live
        request_started.set()
        request_done.wait()


thread = threading.Thread(target=serve_request)
thread.start()
request_started.wait()
show("2. fork from the main thread while another thread serves a request:")
request_done.set()
thread.join()

show("3. libc fork() through ctypes, no request in flight:", fork=ctypes.CDLL(None).fork)
print(f"parent [{os.getpid()}]: native is still {'enabled' if native.enabled else 'disabled'}")
