"""A multiprocessing pool that reads files: something to trace with forkguard trace --follow-forks.

    sudo forkguard trace --follow-forks --per-process --top 8 -- python examples/pool.py
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import tempfile


def digest(path: str) -> str:
    """Hash a file in 4 KiB reads (many small syscalls)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(4096):
            h.update(chunk)
    return h.hexdigest()[:12]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(8):
            path = os.path.join(tmp, f"file{i}")
            with open(path, "wb") as f:
                f.write(os.urandom(256 * 1024))
            paths.append(path)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            print(" ".join(pool.map(digest, paths)))
