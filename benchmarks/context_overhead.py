"""Cost of one enter+exit of forkguard.active() and feature.context(), against a bare ContextVar set/reset.

Claim: marking live state costs at most 3x a ContextVar.set/reset pair (what
seed 000's agent paid per request), and takes no lock.

    python benchmarks/context_overhead.py [--rounds 15] [--number 200000]
"""

from __future__ import annotations

import sys

from _harness import ROOT, timeit_benchmark

SETUP = f'''
import contextvars, sys
sys.path.insert(0, {str(ROOT)!r})
import forkguard
var = contextvars.ContextVar("request")
feature = forkguard.Feature("native")
active = forkguard.active
'''

STATEMENTS = {
    "contextvar_set_reset": "token = var.set(1); var.reset(token)",
    "forkguard_active": "with active('request'): pass",
    "feature_context": "with feature.context(): pass",
}

if __name__ == "__main__":
    sys.exit(timeit_benchmark(__doc__, SETUP, STATEMENTS, [
        ("forkguard_active", "contextvar_set_reset", 3.0),
        ("feature_context", "contextvar_set_reset", 3.0),
    ], number=200_000))
