"""``python -m forkguard``: the same as the ``forkguard`` command."""

import sys

from .cli import main

sys.exit(main())
