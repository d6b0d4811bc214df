"""``python -m forkguard.check._leak_worker TARGET ROUNDS WARMUP CALLS``: the fresh interpreter leak rounds run in."""

import sys

from .leaks import worker_main

sys.exit(worker_main(sys.argv[1:]))
