"""TARGET strings of ``forkguard check``: ``module:function``, ``path/to/file.py:function``, or a script."""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
from collections.abc import Callable


class TargetError(ValueError):
    """TARGET cannot be found or called; the message says which part is wrong."""


def resolve(target: str) -> Callable[[], object]:
    """A zero-argument callable for ``target``.

    ``pkg.mod:func`` imports ``pkg.mod``; ``dir/file.py:func`` loads the file;
    ``dir/script.py`` (no function) runs the script as ``__main__`` on each call.
    """
    if not target or not isinstance(target, str):
        raise TargetError("TARGET is empty: give module:function, path/to/file.py:function or a script path")
    location, _, function = target.rpartition(":") if ":" in target else (target, "", "")
    if not function:
        if not os.path.isfile(location):
            raise TargetError(f"{location!r} is not a file: give module:function, path/to/file.py:function "
                              "or a script path")
        path = os.path.abspath(location)
        return lambda: runpy.run_path(path, run_name="__main__")
    if not function.isidentifier():
        raise TargetError(f"{function!r} is not a function name (in {target!r})")
    if location.endswith(".py") or os.sep in location:
        if not os.path.isfile(location):
            raise TargetError(f"no file {location!r} (in {target!r})")
        sys.path.insert(0, os.path.dirname(os.path.abspath(location)))
        namespace = runpy.run_path(location, run_name=f"forkguard_check_{os.path.basename(location)[:-3]}")
        fn = namespace.get(function)
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise TargetError(f"cannot import {location!r}: {exc}") from None
        fn = getattr(module, function, None)
    if fn is None:
        raise TargetError(f"{location} has no function {function!r}")
    if not callable(fn):
        raise TargetError(f"{location}:{function} is not callable")
    return fn


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a check's fresh interpreter: this one's, with its sys.path (so TARGET imports alike)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def worker_error(target: str, exc: Exception, when: str = "") -> int:
    """Report why a worker stopped as its one JSON error line; the worker's exit status (2)."""
    message = str(exc) if isinstance(exc, TargetError) else f"{target} raised {type(exc).__name__}: {exc}{when}"
    print(json.dumps({"error": message}), flush=True)
    return 2
