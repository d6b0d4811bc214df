"""Cost of ForkLocal.get() against a plain attribute read, and of forkguard.Lock against threading.Lock.

Claim: reading a per-process value costs at most 5x reading an attribute (it
is re-checked against the process on every access, with no syscall).

    python benchmarks/forklocal_overhead.py [--rounds 15] [--number 500000]
"""

from __future__ import annotations

import sys

from _harness import ROOT, timeit_benchmark

SETUP = f'''
import sys, threading
sys.path.insert(0, {str(ROOT)!r})
import forkguard
class Holder:
    pass
holder = Holder()
holder.value = object()
local = forkguard.ForkLocal(object)
local.get()
fg_lock, th_lock = forkguard.Lock(), threading.Lock()
'''

STATEMENTS = {
    "attribute_read": "holder.value",
    "forklocal_get": "local.get()",
    "threading_lock": "with th_lock: pass",
    "forkguard_lock": "with fg_lock: pass",
}

if __name__ == "__main__":
    sys.exit(timeit_benchmark(__doc__, SETUP, STATEMENTS, [
        ("forklocal_get", "attribute_read", 5.0),
        ("forkguard_lock", "threading_lock", None),
    ], number=500_000))
