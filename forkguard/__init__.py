"""forkguard: keep a Python process correct across ``fork()``.

Importing it registers one set of at-fork hooks and nothing else: no
third-party import, no thread. See README.md for the guide.
"""

from . import _env, _policy
from ._context import ActiveContext, active, live_contexts
from ._doctor import doctor
from ._exitmode import exit_mode, set_exit_mode
from ._features import Feature, FeatureChange, features
from ._hooks import Hook
from ._policy import fork_mode, set_fork_mode
from ._primitives import BoundedSemaphore, Condition, Event, ForkLocal, Lock, RLock, Semaphore, Service
from ._process import check_fork, install_signal_trigger, uninstall_signal_trigger
from ._resources import FdInfo, Tracked, inherited, set_inherit_preset, track, tracked, untrack
from ._runtime import (
    ForkInfo,
    after_fork_in_child,
    after_fork_in_parent,
    before_fork,
    fork_info,
    register,
    registered_hooks,
    set_flush_stdio,
    unregister,
)

__version__ = "0.1.0"

# FORKGUARD_FORK_MODE and friends (nothing happens when they are unset); not in
# the forkguard command's own process, whose job is to pass them on.
if not _env.IN_CLI:
    _policy.apply_environment()

__all__ = [
    "ActiveContext",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "FdInfo",
    "Feature",
    "FeatureChange",
    "ForkInfo",
    "ForkLocal",
    "Hook",
    "Lock",
    "RLock",
    "Semaphore",
    "Service",
    "Tracked",
    "__version__",
    "active",
    "after_fork_in_child",
    "after_fork_in_parent",
    "before_fork",
    "check_fork",
    "doctor",
    "exit_mode",
    "features",
    "fork_info",
    "fork_mode",
    "inherited",
    "install_signal_trigger",
    "live_contexts",
    "register",
    "registered_hooks",
    "set_exit_mode",
    "set_flush_stdio",
    "set_fork_mode",
    "set_inherit_preset",
    "track",
    "tracked",
    "uninstall_signal_trigger",
    "unregister",
    "untrack",
]
