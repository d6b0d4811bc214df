"""The output writer every tool uses: atomic replace, devices written through, planted links refused."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys

import pytest
from conftest import ROOT, unprivileged_python

from forkguard._output import OutputError, check_output, write_output

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="plants files as another user: needs root")


@pytest.fixture
def sticky_dir(tmp_path):
    """A world-writable sticky directory owned by root, like /tmp."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    tmp_path.chmod(0o755)
    return shared


@needs_root
def test_symlink_planted_by_another_user_in_a_sticky_directory_is_refused_and_its_target_untouched(
        sticky_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = sticky_dir / "report.json"
    os.symlink(victim, link)
    os.lchown(link, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(OutputError, match="protected_symlinks") as excinfo:
        write_output(str(link), "clobbered")
    assert "\n" not in str(excinfo.value)
    assert victim.read_text() == "precious" and os.path.islink(link)
    with pytest.raises(OutputError):
        check_output(str(link))


def test_own_symlink_in_a_sticky_directory_is_followed_and_the_target_replaced(sticky_dir, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = sticky_dir / "mine"
    os.symlink(target, link)
    write_output(str(link), "new")
    assert target.read_text() == "new" and os.path.islink(link)


def test_regular_file_is_replaced_atomically_keeping_its_mode_and_leaving_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    path.chmod(0o600)
    inode = path.stat().st_ino
    write_output(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # a new file renamed over: readers never see half
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_new_file_is_created_0644(tmp_path):
    path = tmp_path / "new.prom"
    write_output(str(path), b"x")
    assert path.read_bytes() == b"x" and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_dev_null_stays_a_character_device():
    write_output("/dev/null", "discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_full_device_reports_no_space_in_one_line():
    with pytest.raises(OutputError, match="No space left on device") as excinfo:
        write_output("/dev/full", "x" * 10000)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("path", ["-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
def test_standard_output_names_write_to_fd_1(path):
    proc = subprocess.run([sys.executable, "-c", f"from forkguard._output import write_output; "
                                                 f"write_output({path!r}, 'hello')"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello"


def test_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    write_output(str(fifo), "through the fifo")
    assert reader.communicate(timeout=30)[0] == "through the fifo"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("case, message", [
    ("directory", "is a directory"),
    ("missing_dir", "does not exist"),
    ("empty", "non-empty string"),
    ("closed_fd", "not open"),
])
def test_unusable_paths_get_one_line_and_create_nothing(tmp_path, case, message):
    path = {"directory": str(tmp_path), "missing_dir": str(tmp_path / "no" / "such"),
            "empty": "", "closed_fd": "/dev/fd/987"}[case]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OutputError, match=message) as excinfo:
        write_output(path, "x")
    assert "\n" not in str(excinfo.value)
    assert sorted(os.listdir(tmp_path)) == before


@needs_root
def test_unwritable_directory_for_an_unprivileged_writer():
    import tempfile
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="forkguard-out-"))  # pytest's tmp_path sits under a 0700 dir
    tmp_path.chmod(0o755)
    proc = subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                           unprivileged_python(), "-c",
                           f"import sys; sys.path.insert(0, {str(ROOT)!r}); from forkguard._output import "
                           f"write_output; write_output({str(tmp_path / 'x')!r}, 'x')"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "is not writable" in proc.stderr
    assert not (tmp_path / "x").exists()
    tmp_path.rmdir()


@needs_root
@pytest.mark.parametrize("path", ["/proc/forkguard-out", "/sys/forkguard-out"])
def test_directories_root_cannot_write_either_are_refused_before_any_work(path):
    """os.access() says root may write there; creating a file says otherwise."""
    with pytest.raises(OutputError, match="is not writable") as excinfo:
        check_output(path)
    assert "\n" not in str(excinfo.value)
