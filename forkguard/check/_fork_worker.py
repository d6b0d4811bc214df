"""``python -m forkguard.check._fork_worker TARGET FORKS TIMEOUT``: the fresh interpreter fork stress runs in."""

import sys

from .forkstress import worker_main

sys.exit(worker_main(sys.argv[1:]))
