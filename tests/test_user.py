"""``--user``: the command runs as the user (uid, gids, groups, HOME/USER/LOGNAME), the caller stays itself."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from forkguard._user import UserError, lookup_user

NOBODY = pwd.getpwnam("nobody")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.parametrize("spec", ["nobody", str(NOBODY.pw_uid)])
def test_command_runs_with_the_users_ids_groups_and_environment(spec):
    who = lookup_user(spec)
    out = subprocess.run(["sh", "-c", 'echo "$(id -u) $(id -g) $(id -G) $HOME $USER $LOGNAME"'],
                         capture_output=True, text=True, env=who.environ(), timeout=30,
                         **who.popen_kwargs()).stdout.split()
    groups = sorted(int(g) for g in out[2:-3])
    assert out[:2] == [str(NOBODY.pw_uid), str(NOBODY.pw_gid)]
    assert groups == sorted(set(os.getgrouplist("nobody", NOBODY.pw_gid)))
    assert out[-3:] == [NOBODY.pw_dir, "nobody", "nobody"]
    assert os.geteuid() == 0  # the caller keeps its privileges


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_become_in_a_forked_child_drops_every_id():
    who = lookup_user("nobody")
    pid = os.fork()
    if pid == 0:
        try:
            who.become()
            ok = (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) == (who.uid,) * 2 + (who.gid,) * 2
            ok = ok and sorted(os.getgroups()) == sorted(set(who.groups))
            os._exit(0 if ok else 1)
        finally:
            os._exit(3)
    assert os.waitpid(pid, 0)[1] == 0


@pytest.mark.parametrize("spec, message", [
    ("no-such-user-xyz", "no such user"),
    ("99999999999999999999", "no such user"),
    ("", "give a user name"),
    ("  ", "give a user name"),
])
def test_unknown_users_get_one_line(spec, message):
    with pytest.raises(UserError, match=message) as excinfo:
        lookup_user(spec)
    assert "\n" not in str(excinfo.value)
