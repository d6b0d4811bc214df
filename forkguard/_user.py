"""``--user USER``: run a command as another user while the tool keeps root's privileges (as ``strace -u``).

The command gets the user's uid, primary gid and supplementary groups, and
HOME, USER and LOGNAME; the tracer or checker that starts it stays root, so
it can still trace or debug it.
"""

from __future__ import annotations

import os
from collections import namedtuple


class UserError(ValueError):
    """A ``--user`` value that cannot be used; the message is the one line to show."""


class RunAs(namedtuple("RunAs", "name uid gid groups home")):
    """Who a command runs as: ``name``, ``uid``, ``gid``, supplementary ``groups`` and ``home``."""

    __slots__ = ()

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (os.environ by default) with HOME, USER and LOGNAME set for this user."""
        env = dict(os.environ if base is None else base)
        env.update(HOME=self.home, USER=self.name, LOGNAME=self.name)
        return env

    def popen_kwargs(self) -> dict[str, object]:
        """The ``subprocess.Popen`` arguments that start a command as this user."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def become(self) -> None:
        """In a forked child before ``exec``: take this user's groups, gid, then uid (in that order)."""
        os.setgroups(list(self.groups))
        os.setgid(self.gid)
        os.setuid(self.uid)


def lookup_user(spec: str, option: str = "--user") -> RunAs:
    """A user by name or numeric uid; UserError (one line) when unknown or when we may not switch to it."""
    import pwd

    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"{option}: give a user name or a numeric uid")
    try:
        entry = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except (KeyError, OverflowError, ValueError):
        raise UserError(f"{option} {spec!r}: no such user (see /etc/passwd or `getent passwd`)") from None
    if entry.pw_uid != os.geteuid() and os.geteuid() != 0:
        raise UserError(f"{option} {spec!r}: running a command as another user needs root")
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)
