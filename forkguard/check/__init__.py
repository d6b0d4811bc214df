"""forkguard.check: find leaks, crashes and hangs in native extensions, alone and across fork.

Each check returns plain data (the CLI renders it): :func:`leaks`, :func:`crash`,
:func:`hang`, :func:`fork_stress`, :func:`valgrind`, and ``memray_check`` in
``forkguard.check.memray``. Bad arguments raise ``TypeError``/``ValueError``
(:class:`TargetError` for TARGET); a check that cannot run raises :class:`CheckError`.
"""

from __future__ import annotations


class CheckError(Exception):
    """A check cannot run as asked; the message says what is wrong and what to do."""


from .crash import CrashReport, HangReport, crash, hang  # noqa: E402
from .forkstress import ForkReport, fork_stress  # noqa: E402
from .leaks import LeakReport, leaks  # noqa: E402
from .target import TargetError  # noqa: E402
from .valgrind import ValgrindReport, valgrind  # noqa: E402

__all__ = [
    "CheckError",
    "CrashReport",
    "ForkReport",
    "HangReport",
    "LeakReport",
    "TargetError",
    "ValgrindReport",
    "crash",
    "fork_stress",
    "hang",
    "leaks",
    "valgrind",
]
