"""TARGET strings of ``forkguard check``: ``module:function``, ``path/to/file.py:function``, or a script.

:func:`parse_target` checks the string in the checking process, before any
worker starts, so a bad TARGET is one line and nothing runs. The worker then
calls :func:`resolve`. The worker's ``sys.path`` is the standard library and
site-packages first, then the directory TARGET names (a file's own directory,
or the current directory for a module): a ``json.py`` lying in either never
replaces the standard library module, even as root.
"""

from __future__ import annotations

import os
import runpy
import stat
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

ACCEPTED = "give module:function, path/to/file.py:function or a script path"


class TargetError(ValueError):
    """TARGET cannot be found or called; the message says which part is wrong."""


@dataclass(frozen=True)
class Target:
    """A checked TARGET: what to load in the worker and the one directory searched for it."""

    spec: str
    module: str | None  # a dotted module name, or None for a file
    path: str | None  # the absolute path of a file (or script) target
    function: str | None  # None: run the script as __main__ on each call
    directory: str  # appended to the worker's sys.path, after the standard library and site-packages

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_target(spec: object) -> Target:
    """A :class:`Target` for ``spec``, or TargetError saying what is wrong with it (nothing is imported here)."""
    if not isinstance(spec, str) or not spec.strip():
        raise TargetError(f"TARGET is empty: {ACCEPTED}")
    if "\0" in spec:
        raise TargetError(f"TARGET {spec!r} contains a NUL byte: {ACCEPTED}")
    if ":" not in spec:
        return Target(spec, None, _regular_file(spec, spec), None, os.path.dirname(os.path.abspath(spec)))
    location, function = spec.rsplit(":", 1)
    if not function:
        raise TargetError(f"TARGET {spec!r} has nothing after ':': {ACCEPTED} (a script takes no ':')")
    if not location:
        raise TargetError(f"TARGET {spec!r} has nothing before ':': {ACCEPTED}")
    if not function.isidentifier():
        raise TargetError(f"{function!r} is not a function name (in TARGET {spec!r})")
    if location.endswith(".py") or os.sep in location:
        path = _regular_file(location, spec)
        return Target(spec, None, path, function, os.path.dirname(path))
    if not all(part.isidentifier() for part in location.split(".")):
        raise TargetError(f"{location!r} is not a module name (in TARGET {spec!r}): {ACCEPTED}")
    return Target(spec, location, None, function, os.getcwd())


def _regular_file(location: str, spec: str) -> str:
    try:
        info = os.stat(location)
    except OSError as exc:
        raise TargetError(f"no file {location!r} (in TARGET {spec!r}: {exc.strerror}): {ACCEPTED}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TargetError(f"{location!r} is not a regular file (in TARGET {spec!r}): {ACCEPTED}")
    return os.path.abspath(location)


def resolve(target: Target) -> Callable[[], object]:
    """In the worker: a zero-argument callable for ``target`` (TargetError when it is missing or not callable)."""
    if target.directory not in sys.path:
        sys.path.append(target.directory)  # after the standard library and site-packages, never before
    if target.function is None:
        path = target.path
        return lambda: runpy.run_path(path, run_name="__main__")
    if target.path is not None:
        name = f"forkguard_check_{os.path.basename(target.path)[:-3]}"
        namespace = runpy.run_path(target.path, run_name=name)
        fn = namespace.get(target.function)
        where = target.path
    else:
        import importlib

        try:
            module = importlib.import_module(target.module)
        except ImportError as exc:
            raise TargetError(f"cannot import {target.module!r}: {exc}") from None
        fn = getattr(module, target.function, None)
        where = target.module
    if fn is None:
        raise TargetError(f"{where} has no function {target.function!r}")
    if not callable(fn):
        raise TargetError(f"{where}:{target.function} is not callable")
    return fn
