"""SQLAlchemy: give each child process a pool of its own, leaving the parent's connections alone.

    engine = sqlalchemy.create_engine(url)
    forkguard.integrations.sqlalchemy.dispose_in_child(engine)

In every child (``os.fork``, multiprocessing's fork, a libc fork seen by
forkguard) this runs ``engine.dispose(close=False)``, which SQLAlchemy
recommends for forked processes: a new, empty pool, and the inherited pool's
connections neither closed nor finalized, since they are the parent's.
Connections checked out at the instant of the fork stay with the code holding
them: fork outside ``with engine.connect():`` blocks.
"""

from __future__ import annotations

import weakref

from .._hooks import Hook
from .._primitives import keep_forever
from .._runtime import register


def dispose_in_child(engine: object) -> Hook:
    """Register the child-side dispose for ``engine`` (held weakly); returns the hook's handle."""
    if not callable(getattr(engine, "dispose", None)) or not hasattr(engine, "pool"):
        raise TypeError(f"dispose_in_child: {engine!r} is not a SQLAlchemy Engine")
    engine_ref = weakref.ref(engine)

    def give_child_its_own_pool() -> None:
        engine = engine_ref()
        if engine is not None:
            keep_forever(engine.pool)  # its connections are the parent's: never finalize them here
            engine.dispose(close=False)

    return register(after_in_child=give_child_its_own_pool)
