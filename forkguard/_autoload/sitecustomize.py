"""Put on PYTHONPATH by ``forkguard run``: activates forkguard in a program that does not import it.

Python imports ``sitecustomize`` at startup, so this is Python's LD_PRELOAD.
forkguard is loaded from its own directory without adding anything to
``sys.path`` (the program sees no other package of forkguard's environment),
then the ``sitecustomize`` this file shadows, if any, runs as it would have.
"""

import importlib.util
import os
import sys


def _load_forkguard() -> None:
    if "forkguard" in sys.modules:
        return
    package_dir = os.environ.get("FORKGUARD_PACKAGE_DIR") or os.path.dirname(os.path.dirname(__file__))
    spec = importlib.util.spec_from_file_location(
        "forkguard", os.path.join(package_dir, "__init__.py"), submodule_search_locations=[package_dir]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["forkguard"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["forkguard"]
        raise


def _chain_shadowed_sitecustomize() -> None:
    """Leave sys.path as the program would have it, then run the sitecustomize this one hides."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    mine = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")
    except ModuleNotFoundError as exc:
        if exc.name != "sitecustomize":
            raise
        sys.modules["sitecustomize"] = mine


_load_forkguard()
_chain_shadowed_sitecustomize()
