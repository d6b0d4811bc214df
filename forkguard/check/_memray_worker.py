"""``python -m forkguard.check._memray_worker TARGET CAPTURE CALLS``: the fresh interpreter memray tracks."""

import sys

from .memray import worker_main

sys.exit(worker_main(sys.argv[1:]))
