"""Targets for `forkguard check`: a small C library (compiled with gcc on first import) that leaks, crashes and
deadlocks after fork, and pure-Python functions: leaking on every call or on every 100th, and a bounded cache.

    forkguard check leaks examples/leaky.py:leak_native
    forkguard check leaks examples/leaky.py:leak_small      # 16 bytes a call
    forkguard check fork examples/leaky.py:unguarded
    python examples/leaky.py crash        # or: deadlock, leak (run through forkguard check crash/hang/valgrind)
"""

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile

import forkguard

SOURCE = r"""
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
char *volatile last;
void leak_512(void) { char *p = malloc(512); memset(p, 7, 512); last = p; }
void leak_16(void) { char *p = malloc(16); memset(p, 7, 16); last = p; }
void balanced(void) { char *p = malloc(512); memset(p, 7, 512); last = p; free(p); }
void crash(void) { volatile int *p = 0; *p = 1; }
void locked_work(void) { pthread_mutex_lock(&lock); usleep(20000); pthread_mutex_unlock(&lock); }
"""


def _load() -> ctypes.CDLL:
    """Compile SOURCE once per content into the temp directory; gcc is all it needs."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    lib = os.path.join(tempfile.gettempdir(), f"forkguard-example-leaky-{digest}.so")
    if not os.path.exists(lib):
        src = lib[:-3] + ".c"
        with open(src, "w") as f:
            f.write(SOURCE)
        subprocess.run(["gcc", "-shared", "-fPIC", "-g", "-O1", "-pthread", "-o", lib + ".tmp", src], check=True)
        os.replace(lib + ".tmp", lib)
    return ctypes.CDLL(lib)


native = _load()
engine = forkguard.Feature("engine")  # native state that must not be used in a late-fork child
_kept: list[bytes] = []
_cache: dict[int, str] = {}


def leak_native() -> None:
    native.leak_512()


def leak_small() -> None:
    native.leak_16()


def clean_native() -> None:
    native.balanced()


def leak_python() -> None:
    _kept.append(bytearray(100))


def leak_rare(calls: list[int] = [0]) -> None:  # noqa: B006 (a counter kept between calls)
    calls[0] += 1
    if calls[0] % 100 == 0:
        _kept.append(bytearray(100))


def cached(key: list[int] = [0]) -> str:  # noqa: B006 (a counter kept between calls)
    key[0] += 1
    return _cache.setdefault(key[0] % 2000, str(key[0]))


def unguarded() -> None:
    native.locked_work()


def guarded() -> None:
    if engine.enabled:
        with engine.context():
            native.locked_work()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "crash"
    if what == "crash":
        native.crash()
    elif what == "leak":
        for _ in range(10):
            leak_native()
    elif what == "deadlock":
        import threading
        import time

        threading.Thread(target=lambda: [native.locked_work() for _ in iter(int, 1)], daemon=True).start()
        time.sleep(0.1)
        pid = os.fork()
        if pid == 0:
            for _ in range(100):
                native.locked_work()  # the lock is copied held (or soon is): the child waits forever
            os._exit(0)
        os.waitpid(pid, 0)
