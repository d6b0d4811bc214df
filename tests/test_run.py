"""``forkguard run``: forkguard injected into unchanged Python programs, options checked before they start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

FORKGUARD = [sys.executable, "-m", "forkguard"]


def run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FORKGUARD_") or k == "FORKGUARD_REQUIRE_BPF"}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run([*FORKGUARD, "run", *args], capture_output=True, text=True, cwd=cwd, env=full_env,
                          timeout=timeout)


def test_deny_makes_an_unchanged_script_fail_with_the_clear_error(tmp_path):
    (tmp_path / "script.py").write_text("import os\nprint('started', flush=True)\nos.fork()\nprint('forked')\n")
    proc = run(["--fork-mode", "deny", "--", sys.executable, "script.py"], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == "started\n"
    assert ("OSError: [Errno 95] fork() denied by forkguard (fork mode 'deny'); allow it with "
            "forkguard.set_fork_mode('allow') or FORKGUARD_FORK_MODE=allow") in proc.stderr


def test_module_entry_point_sees_the_policy_and_an_unchanged_sys_path(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import json, sys\n"
        "fg = sys.modules.get('forkguard')\n"
        "print(json.dumps({'loaded': fg is not None, 'fork': fg.fork_mode()['mode'], 'exit': fg.exit_mode(),\n"
        "                  'autoload_on_path': any('_autoload' in p for p in sys.path)}))\n"
        "sys.exit(7)\n"
    )
    proc = run(["--fork-mode", "warn", "--exit-mode", "kill_children", "--exit-grace", "2", "--pdeathsig",
                "--", sys.executable, "-m", "pkg"], cwd=tmp_path)
    assert proc.returncode == 7  # the program's exit status is passed through
    out = json.loads(proc.stdout)
    assert out == {"loaded": True, "fork": "warn", "autoload_on_path": False,
                   "exit": {"mode": "kill_children", "grace": 2.0, "timeout": None, "descendants": False,
                            "pdeathsig": 9}}


def test_an_existing_sitecustomize_still_runs(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import builtins\nbuiltins.SITE_RAN = True\n")
    program = "import builtins, forkguard; print(getattr(builtins, 'SITE_RAN', False), forkguard.fork_mode()['mode'])"
    proc = run(["--fork-mode", "warn", "--", sys.executable, "-c", program], cwd=tmp_path,
               env={"PYTHONPATH": f"{site}"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "warn"]


@pytest.mark.parametrize("args, error", [
    (["--fork-mode", "forbid", "--"], "--fork-mode 'forbid': not one of allow, warn, deny, wait_for_exit_exec"),
    (["--exit-grace", "soon", "--"], "--exit-grace 'soon': not a number of seconds"),
    (["--fork-mode", "deny", "--fork-timeout", "3", "--"], "timeout and on_timeout apply only to 'wait_for_exit_exec'"),
])
def test_bad_options_are_refused_before_the_program_starts(tmp_path, args, error):
    marker = tmp_path / "started"
    proc = run([*args, sys.executable, "-c", f"open({str(marker)!r}, 'w')"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"forkguard run: error: {proc.stderr.split('error: ', 1)[1].strip()}"]
    assert error in proc.stderr
    assert not marker.exists()


def test_a_non_python_command_and_a_missing_command_get_one_clear_line(tmp_path):
    proc = run(["--", "ls"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "'ls' is not a Python program" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run(["--", "no-such-command-here"], cwd=tmp_path)
    assert proc.returncode == 2 and "command not found" in proc.stderr
    proc = run([], cwd=tmp_path)
    assert proc.returncode == 2 and "no command given" in proc.stderr


@pytest.mark.slow
def test_gunicorn_command_line_runs_with_forkguard_in_master_and_workers(tmp_path):
    (tmp_path / "plainapp.py").write_text(
        "import json, os, sys\n"
        "def app(environ, start_response):\n"
        "    fg = sys.modules['forkguard']\n"
        "    info = fg.fork_info()\n"
        "    body = json.dumps({'pid': os.getpid(), 'exit': fg.exit_mode()['mode'], 'generation': info.generation,\n"
        "                       'kind': info.kind}).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKGUARD_")}
    env["PYTHONPATH"] = str(ROOT)
    server = subprocess.Popen([*FORKGUARD, "run", "--exit-mode", "kill_children", "--", gunicorn, "--workers", "2",
                               "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "plainapp:app"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    state = json.loads(response.read())
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"gunicorn under forkguard run did not start:\n{server.communicate()[0]}")
                time.sleep(0.1)
        assert state == {"pid": state["pid"], "exit": "kill_children", "generation": 1, "kind": "early"}
    finally:
        server.terminate()
        server.wait(30)
