"""Put on PYTHONPATH by ``forkguard run``: activates forkguard in a program that does not import it.

Python imports ``sitecustomize`` at startup, so this is Python's LD_PRELOAD.
forkguard is loaded from its own directory without adding anything to
``sys.path`` (the program sees no other package of forkguard's environment),
then the ``sitecustomize`` this file shadows, if any, runs as it would have.

Fail closed: when forkguard cannot be loaded or its FORKGUARD_* policy cannot
be applied (a bad value, an import error, a Python too old), the process
prints one line and exits with status 2 before the program's code runs. An
exception would not do: ``site`` reports it as "Error in sitecustomize" and
runs the program anyway. This file parses on any Python, so that an old one
gets the line too.
"""

import os
import sys


def _refuse(reason):
    program = " ".join(getattr(sys, "orig_argv", None) or [sys.executable])
    line = "forkguard: {}; not starting {!r} without the policy forkguard run gave it\n".format(  # noqa: UP032
        reason, program)  # (no f-string: an old Python must parse this file to say it is too old)
    os.write(2, line.encode("utf-8", "replace"))
    os._exit(2)


def _load_forkguard():
    """Import forkguard (which applies the FORKGUARD_* policy), its exec guard installed first."""
    import importlib
    import importlib.util

    package_dir = os.environ.get("FORKGUARD_PACKAGE_DIR") or os.path.dirname(os.path.dirname(__file__))
    spec = importlib.util.spec_from_file_location(
        "forkguard", os.path.join(package_dir, "__init__.py"), submodule_search_locations=[package_dir]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["forkguard"] = module
    try:
        # The package's submodules import before its __init__ runs, as they do
        # during any package's own import; the guard must be in place before
        # __init__ applies the policy, whose wrappers then wrap the guard's.
        importlib.import_module("forkguard._launch").install_exec_guard()
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == "forkguard" or n.startswith("forkguard.")]:
            del sys.modules[name]
        raise


def _chain_shadowed_sitecustomize():
    """Leave sys.path as the program would have it, then run the sitecustomize this one hides."""
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    mine = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")
    except ModuleNotFoundError as exc:
        if exc.name != "sitecustomize":
            raise
        sys.modules["sitecustomize"] = mine


if "forkguard" not in sys.modules:
    if sys.version_info < (3, 10):  # noqa: UP036 - an older interpreter can inherit forkguard run's PYTHONPATH
        _refuse("forkguard needs Python 3.10 or later, and this is {}.{}".format(*sys.version_info[:2]))
    try:
        _load_forkguard()
    except BaseException as exc:
        message = (str(exc).splitlines() or [""])[0]
        if not isinstance(exc, ValueError):  # a bad FORKGUARD_* value names itself; anything else by its type
            message = type(exc).__name__ + (": " + message if message else "")
        _refuse("cannot apply the policy: " + message)
_chain_shadowed_sitecustomize()
