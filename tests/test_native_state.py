"""Native state across a late fork: a pthread mutex held by a background thread at the fork.

A child that touches the library after such a fork waits forever on a mutex whose
owner does not exist in the child. With forkguard the late-fork child finds the
feature disabled and leaves the library alone; the control, without forkguard,
hangs and is killed.
"""

from __future__ import annotations

import pytest
from conftest import compile_shared, run_json

NATIVE_SOURCE = r'''
#include <pthread.h>
#include <unistd.h>

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int busy;
static int counter;

/* Native work done while serving a request: holds the library's lock. */
void native_work(int ms) {
    pthread_mutex_lock(&state_lock);
    busy = 1;
    usleep(ms * 1000);
    counter++;
    busy = 0;
    pthread_mutex_unlock(&state_lock);
}

int native_busy(void) { return busy; }

/* Any use of the library's state takes the lock. */
int native_touch(void) {
    pthread_mutex_lock(&state_lock);
    int c = counter;
    pthread_mutex_unlock(&state_lock);
    return c;
}
'''

SCRIPT = '''
import ctypes, json, os, sys, threading, time
USE_FORKGUARD = {use_forkguard}
lib = ctypes.CDLL({lib!r})
if USE_FORKGUARD:
    import forkguard
    feature = forkguard.Feature("native-lib")
    def serve():
        with feature.context():
            lib.native_work(10_000)
    def feature_enabled():
        return feature.enabled
else:
    def serve():
        lib.native_work(10_000)
    def feature_enabled():
        return True

threading.Thread(target=serve, daemon=True).start()
while not lib.native_busy():       # the background thread now holds the mutex
    time.sleep(0.001)

pid = os.fork()
if pid == 0:
    if feature_enabled():
        lib.native_touch()          # never returns: the mutex's owner is not in this process
    os._exit(0)

deadline = time.monotonic() + {timeout}
status = None
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.01)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(json.dumps({{"hung": status is None or not done, "status": status,
                  "seconds": round({timeout} - (deadline - time.monotonic()), 3)}}))
sys.stdout.flush()
os._exit(0)
'''


@pytest.mark.parametrize("use_forkguard", [True, False], ids=["forkguard", "control"])
def test_late_fork_child_does_not_touch_a_mutex_held_at_the_fork(tmp_path, use_forkguard):
    lib = compile_shared(NATIVE_SOURCE, tmp_path, "nativestate")
    out = run_json(SCRIPT.format(use_forkguard=use_forkguard, lib=str(lib), timeout=3.0), timeout=60)
    if use_forkguard:
        assert out["hung"] is False and out["status"] == 0, out
        assert out["seconds"] < 2.0, out
    else:
        assert out["hung"] is True, "control child should deadlock on the inherited mutex"
