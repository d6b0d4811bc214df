"""forkguard: keep a Python process correct across ``fork()``.

Importing it registers one set of at-fork hooks and nothing else: no
third-party import, no thread. See README.md for the guide.
"""

from ._context import ActiveContext, active, live_contexts
from ._features import Feature, FeatureChange, features
from ._hooks import Hook
from ._process import check_fork
from ._runtime import (
    ForkInfo,
    after_fork_in_child,
    after_fork_in_parent,
    before_fork,
    fork_info,
    register,
    registered_hooks,
    unregister,
)

__version__ = "0.1.0"

__all__ = [
    "ActiveContext",
    "Feature",
    "FeatureChange",
    "ForkInfo",
    "Hook",
    "__version__",
    "active",
    "after_fork_in_child",
    "after_fork_in_parent",
    "before_fork",
    "check_fork",
    "features",
    "fork_info",
    "live_contexts",
    "register",
    "registered_hooks",
    "unregister",
]
