"""forkguard's log lines, without importing ``logging``.

Importing ``logging`` (and with it ``threading``) adds their own at-fork work to
every fork of the process, and importing it *during* a fork (from a hook) would
register its handlers half-way through one. So forkguard logs through the
``forkguard`` logger only when the application has imported ``logging``; until
then nobody configured a handler, and warnings and errors go straight to
stderr, as logging's last-resort handler would print them.
"""

from __future__ import annotations

import sys

LOGGER = "forkguard"
_DEBUG, _WARNING, _ERROR = 10, 30, 40  # logging's levels


def debug(msg: str, *args: object) -> None:
    """Log at DEBUG on the ``forkguard`` logger, if the application uses logging at all."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(LOGGER).debug(msg, *args)


def warning(msg: str, *args: object) -> None:
    """Log at WARNING on the ``forkguard`` logger, or to stderr."""
    _emit(_WARNING, msg, args, with_traceback=False)


def error(msg: str, *args: object) -> None:
    """Log at ERROR on the ``forkguard`` logger, or to stderr."""
    _emit(_ERROR, msg, args, with_traceback=False)


def error_with_traceback(msg: str, *args: object) -> None:
    """Log at ERROR with the current exception's traceback (call from an ``except`` block)."""
    _emit(_ERROR, msg, args, with_traceback=True)


def _emit(level: int, msg: str, args: tuple[object, ...], with_traceback: bool) -> None:
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(LOGGER).log(level, msg, *args, exc_info=with_traceback)
        return
    text = f"forkguard: {msg % args}\n"
    if with_traceback:
        import traceback

        text += traceback.format_exc()
    sys.stderr.write(text)
