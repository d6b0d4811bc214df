"""forkguard's log lines, without importing ``logging`` at ``import forkguard``.

Importing ``logging`` (and with it ``threading``) adds their own at-fork work to
every fork of the process. Debug lines can only be shown if the application
configured logging, so they are skipped while ``logging`` is not imported;
errors import it on demand.
"""

from __future__ import annotations

import sys

LOGGER = "forkguard"


def debug(msg: str, *args: object) -> None:
    """Log at DEBUG on the ``forkguard`` logger, if the application uses logging at all."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(LOGGER).debug(msg, *args)


def error_with_traceback(msg: str, *args: object) -> None:
    """Log at ERROR with the current exception's traceback (call from an ``except`` block)."""
    import logging

    logging.getLogger(LOGGER).error(msg, *args, exc_info=True)
