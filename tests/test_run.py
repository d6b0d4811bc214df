"""``forkguard run``: forkguard injected into unchanged Python programs, options checked before they start."""

from __future__ import annotations

import json
import os
import pwd
import shutil
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


# ---------------------------------------------------------------------------- bad input

def marker_command(tmp_path: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(tmp_path / 'started')!r}, 'w')"]


# (id, options before the command, what the one line must say). Every option of `forkguard run`, each bad kind of
# value: wrong type, negative, huge, inf, nan, empty, unicode. Validation lives in each option's parser
# (_policy.ENV_OPTIONS, run.RUN_OPTIONS) and in check_policy for combinations.
SECONDS = "a number of seconds"
BAD_OPTIONS = [
    *[(f"fork-mode {v!r}", ["--fork-mode", v], "--fork-mode") for v in ("forbid", "", "dény", "2", "nan")],
    *[(f"fork-timeout {v!r}", ["--fork-mode", "wait_for_exit_exec", "--fork-timeout", v], "--fork-timeout")
      for v in ("-1", "inf", "nan", "", "soon", "²", "1e999", "-inf")],
    ("fork-timeout without wait_for_exit_exec", ["--fork-mode", "deny", "--fork-timeout", "3"],
     "--fork-mode deny --fork-timeout 3: timeout and on_timeout apply only to 'wait_for_exit_exec'"),
    *[(f"fork-on-timeout {v!r}", ["--fork-mode", "wait_for_exit_exec", "--fork-on-timeout", v], "--fork-on-timeout")
      for v in ("later", "", "kïll", "1")],
    ("deny-exec without deny", ["--fork-mode", "warn", "--deny-exec"], "deny_exec applies only to 'deny'"),
    *[(f"exit-mode {v!r}", ["--exit-mode", v], "--exit-mode") for v in ("kill", "", "nöne", "-1")],
    *[(f"exit-grace {v!r}", ["--exit-mode", "kill_children", "--exit-grace", v], "--exit-grace")
      for v in ("-1", "inf", "nan", "", "soon", "²", "1e999")],
    *[(f"exit-timeout {v!r}", ["--exit-mode", "wait_for_children", "--exit-timeout", v], "--exit-timeout")
      for v in ("-5", "inf", "nan", "", "x")],
    ("exit-timeout without wait_for_children", ["--exit-mode", "kill_children", "--exit-timeout", "3"],
     "--exit-mode kill_children --exit-timeout 3: timeout applies only to 'wait_for_children'"),
    ("exit-descendants without wait_for_children", ["--exit-descendants"], "descendants applies only"),
    *[(f"pdeathsig {v!r}", ["--exit-mode", "kill_children", "--pdeathsig", v], "--pdeathsig")
      for v in ("²", "-1", "9223372036854775808", "nan", "", "SIGKILL", "99", "19", "1.5", "٣")],
    ("pdeathsig without an exit mode", ["--pdeathsig"], "--pdeathsig 1: pdeathsig needs an exit mode"),
    *[(f"enforce {v!r}", ["--fork-mode", "deny", "--enforce", v], "--enforce") for v in ("bogus", "", "kérnel")],
    ("enforce kernel with warn", ["--fork-mode", "warn", "--enforce", "kernel"],
     "--enforce kernel applies only to --fork-mode deny, not 'warn'"),
    *[(f"{flag} without its value", [flag], f"argument {flag}: expected one argument")
      for flag in ("--fork-mode", "--fork-timeout", "--fork-on-timeout", "--exit-mode", "--exit-grace",
                   "--exit-timeout", "--enforce")],
    ("unknown option", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
]


@pytest.mark.parametrize("args, says", [row[1:] for row in BAD_OPTIONS], ids=[row[0] for row in BAD_OPTIONS])
def test_bad_options_get_one_line_naming_the_option_and_the_program_never_starts(tmp_path, args, says):
    proc = run([*args, "--", *marker_command(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("forkguard run: error: "), proc.stderr
    assert says in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "started").exists()


def test_option_errors_say_what_is_accepted(tmp_path):
    said = {
        "--fork-mode": "not one of allow, warn, deny, wait_for_exit_exec",
        "--fork-timeout": "not a finite number of seconds >= 0",
        "--pdeathsig": "not 1 (SIGKILL), 0 or a signal number",
        "--enforce": "not one of auto, kernel, python",
    }
    needs = {"--fork-timeout": ["--fork-mode", "wait_for_exit_exec"], "--pdeathsig": ["--exit-mode", "kill_children"]}
    for flag, value in (("--fork-mode", "dény"), ("--fork-timeout", "inf"), ("--pdeathsig", "²"),
                        ("--enforce", "bogus")):
        proc = run([*needs.get(flag, []), flag, value, "--", *marker_command(tmp_path)], cwd=tmp_path)
        assert proc.stderr == f"forkguard run: error: {flag} {value!r}: {said[flag]}\n"


@pytest.mark.parametrize("command, says", [
    (None, "no command given"),
    (["--"], "no command given"),
    (["python", "app.py"], "put -- between the options and the command (python app.py)"),
    (["--", ""], "the command is an empty string"),
    (["--", "/tmp"], "'/tmp' is a directory, not a program"),
    (["--", "no-such-command-here"], "'no-such-command-here': command not found"),
    (["--", "./data.py"], "'./data.py' is not executable"),
    (["--", "ls"], "'ls' is not a Python program (an ELF program that is not a Python interpreter)"),
], ids=["nothing", "only --", "missing --", "empty", "directory", "missing", "not executable", "not python"])
def test_bad_commands_get_one_line(tmp_path, command, says):
    (tmp_path / "data.py").write_text("print('hi')\n")
    proc = run(command or [], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("forkguard run: error: ")
    assert says in proc.stderr, proc.stderr


def test_a_fork_timeout_longer_than_poll_can_wait_still_works(tmp_path):
    """2**63 seconds is finite, so it is accepted; poll() takes int milliseconds, so it is waited in turns."""
    program = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(os.waitpid(pid, 0)[1])\n"
    proc = run(["--fork-mode", "wait_for_exit_exec", "--fork-timeout", str(2**63), "--", sys.executable, "-c",
                program], cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "0\n", "")


# ---------------------------------------------------------------------------- failing closed: the README's table

# Each process this program becomes writes started-<pid>; a child it manages to fork writes forked-<pid>.
FORKER = r'''
import ctypes, errno, json, os, subprocess, sys
open(f"started-{os.getpid()}", "w").close()
how = sys.argv[1]
out = {}
if how in ("os", "libc"):
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        pid = os.fork() if how == "os" else libc.fork()
        if pid < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        if pid == 0:
            open(f"forked-{os.getpid()}", "w").close()
            os._exit(0)
        os.waitpid(pid, 0)
        out["fork"] = "ok"
    except OSError as exc:
        out["fork"], out["message"] = errno.errorcode[exc.errno], str(exc)
else:
    command = {"child -I": [sys.executable, "-I", __file__, "os"],
               "child by a shell": ["sh", "-c", f'exec "{sys.executable}" -I "{__file__}" os'],
               "child with a bad FORKGUARD_FORK_MODE": [sys.executable, __file__, "os"]}[how]
    env = dict(os.environ, FORKGUARD_FORK_MODE="bogus") if "bad" in how else None
    try:
        child = subprocess.run(command, capture_output=True, text=True, env=env)
        out["child"] = {"rc": child.returncode, "out": child.stdout, "err": child.stderr}
    except OSError as exc:
        out["refused"] = [errno.errorcode[exc.errno], str(exc)]
out["children"] = [c for t in os.listdir("/proc/self/task")
                   for c in open(f"/proc/self/task/{t}/children").read().split()]
print(json.dumps(out))
'''

SHELL_FORKER = "#!/bin/sh\ntouch started-$$\n( touch forked-subshell )\n"
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# way of starting -> (under --enforce python, under the kernel rule). README's table says the same in words:
# "policy" forkguard's own ENOTSUP; "refused" before the program starts; "ENOTSUP" from the kernel;
# "call refused" the program's exec raises OSError(ENOTSUP); "not covered" the fork happens; "exit 2" the child
# prints one line and stops before its program runs.
STARTS = {
    "plain": ("policy", "policy"),
    "-I": ("refused", "ENOTSUP"),
    "-E": ("refused", "ENOTSUP"),
    "-S": ("refused", "ENOTSUP"),
    "#! -Es": ("refused", "ENOTSUP"),
    "child -I": ("call refused", "ENOTSUP"),
    "child by a shell": ("not covered", "ENOTSUP"),
    "child with a bad FORKGUARD_FORK_MODE": ("exit 2", "exit 2"),
    "libc fork": ("not covered", "ENOTSUP"),
    "not Python": ("refused", "ENOTSUP"),
}


def start_command(way: str, tmp_path: Path) -> list[str]:
    prog = tmp_path / "forker.py"
    prog.write_text(FORKER)
    if way == "#! -Es":
        script = tmp_path / "tool"
        script.write_text(f"#!{SYSTEM_PYTHON} -Es\n{FORKER}")
        script.chmod(0o755)
        return [str(script), "os"]
    if way == "not Python":
        script = tmp_path / "tool.sh"
        script.write_text(SHELL_FORKER)
        script.chmod(0o755)
        return [str(script)]
    if way in ("-I", "-E", "-S"):
        return [sys.executable, way, str(prog), "os"]
    return [sys.executable, str(prog), "libc" if way == "libc fork" else "os" if way == "plain" else way]


@pytest.mark.parametrize("enforce", ["python", "kernel"])
@pytest.mark.parametrize("way", list(STARTS))
def test_deny_fails_closed_whatever_way_the_program_starts(tmp_path, way, enforce):
    proc = run(["--fork-mode", "deny", "--enforce", enforce, "--", *start_command(way, tmp_path)], cwd=tmp_path)
    expected = STARTS[way][enforce == "kernel"]
    started = sorted(p.name for p in tmp_path.glob("started-*"))
    forked = sorted(p.name for p in tmp_path.glob("forked-*"))
    if expected == "refused":
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "forkguard run: error: " in proc.stderr and started == []
        return
    if expected == "not covered":  # documented gap of the Python-level policy: the fork happens
        assert forked, proc.stdout + proc.stderr
        return
    assert forked == [], f"a child process ran: {proc.stdout}{proc.stderr}"
    if way == "not Python":
        assert "Cannot fork" in proc.stderr and len(started) == 1  # the shell ran; its fork was refused
        return
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["children"] == []
    if expected == "policy":
        assert out["fork"] == "ENOTSUP" and "denied by forkguard (fork mode 'deny')" in out["message"]
    elif expected == "ENOTSUP" and "child" in out:
        assert json.loads(out["child"]["out"])["fork"] == "ENOTSUP" and len(started) == 2
    elif expected == "ENOTSUP":
        assert out["fork"] == "ENOTSUP" and out["message"] == "[Errno 95] Operation not supported"
    elif expected == "call refused":
        assert out["refused"][0] == "ENOTSUP" and "-I (isolated mode) ignores PYTHONPATH" in out["refused"][1]
        assert len(started) == 1  # the child never started
    elif expected == "exit 2":
        child = out["child"]
        assert child["rc"] == 2 and child["out"] == "" and child["err"].count("\n") == 1
        assert "FORKGUARD_FORK_MODE='bogus': not one of" in child["err"] and len(started) == 1
    else:
        pytest.fail(f"no check for {expected!r}")


def test_readme_table_of_ways_to_start_matches_what_the_tests_prove():
    section = (ROOT / "README.md").read_text().split("### What each way of starting a program gets", 1)[1]
    rows = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("| ") and "---" not in line]
    words = {"policy": "forkguard's", "refused": "refused up front", "ENOTSUP": "`ENOTSUP`",
             "call refused": "raises `OSError(ENOTSUP)`", "not covered": "not covered", "exit 2": "exits 2"}
    table = {row.split(" | ")[0].strip("| "): row.split(" | ")[1:] for row in rows[1:]}
    readme_rows = {
        "plain": "`python app.py`", "-I": "`python -I`, `-E`, `-S`", "-E": "`python -I`, `-E`, `-S`",
        "-S": "`python -I`, `-E`, `-S`", "#! -Es": "a `#!/usr/bin/python3 -Es` script",
        "child -I": "a child interpreter started with `-I`/`-E`/`-S` from Python",
        "child by a shell": "a child interpreter started with those flags by a shell or C code",
        "child with a bad FORKGUARD_FORK_MODE": "a child interpreter that cannot apply the policy",
        "libc fork": "libc `fork()` from C", "not Python": "a program that is not Python",
    }
    for way, (python_level, kernel) in STARTS.items():
        row = next((cells for name, cells in table.items() if name.startswith(readme_rows[way])), None)
        assert row is not None, f"README's table has no row for {way!r}"
        assert words[python_level] in row[0] and words[kernel] in row[1], (way, row)


def test_without_seccomp_auto_falls_back_to_python_with_a_note_and_kernel_is_refused(tmp_path):
    """A sandbox whose own filter answers seccomp() with ENOSYS: the kernel rule cannot be had."""
    no_seccomp = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); from forkguard import _seccomp\n"
                  "_seccomp.load([(0x20, 0, 0, 0), (0x15, 0, 1, 317), (0x06, 0, 0, 0x50000 | 38),"
                  " (0x06, 0, 0, 0x7FFF0000)])\n"
                  "os.execv(sys.executable, [sys.executable, '-m', 'forkguard', 'run', *sys.argv[1:]])")
    program = ("import json, os, forkguard\ntry:\n    os.fork()\n"
               "except OSError as e:\n    print(json.dumps([str(e), forkguard.fork_mode()['kernel']]))")
    base = [sys.executable, "-c", no_seccomp, "--fork-mode", "deny"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKGUARD_")}
    env["PYTHONPATH"] = str(ROOT)
    auto = subprocess.run([*base, "--", sys.executable, "-c", program], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert auto.returncode == 0, auto.stderr
    assert auto.stderr == ("forkguard run: note: seccomp filters are unavailable here (seccomp(): Function not "
                           "implemented), so deny is enforced inside Python only (see --enforce)\n")
    message, kernel = json.loads(auto.stdout)
    assert "denied by forkguard (fork mode 'deny')" in message and kernel is None
    kernel = subprocess.run([*base, "--enforce", "kernel", "--", *marker_command(tmp_path)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=60)
    assert kernel.returncode == 2 and kernel.stderr == (
        "forkguard run: error: --enforce kernel: seccomp filters are unavailable here (seccomp(): Function not "
        "implemented); use --enforce python\n")
    isolated = subprocess.run([*base, "--", sys.executable, "-I", "-c", "open('started', 'w')"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=60)
    assert isolated.returncode == 2 and isolated.stderr.splitlines() == [  # the refusal alone: no note first
        "forkguard run: error: '" + sys.executable + "' (a Python interpreter) would run without forkguard's fork mode "
        "'deny': -I (isolated mode) ignores PYTHONPATH (given on the command line); run it without that option "
        "(the kernel rule, which would hold deny whatever the program, is unavailable here)"]
    assert not (tmp_path / "started").exists()


# ---------------------------------------------------------------------------- what the program is

def test_programs_are_recognised_by_what_the_file_is_not_by_its_name(tmp_path):
    fake = tmp_path / "python3-config"  # a shell script with a Python name, like the real one
    fake.write_text("#!/bin/sh\necho --cflags\n")
    tool = tmp_path / "tool"  # a Python script whose name says nothing
    tool.write_text(f"#!{sys.executable}\nimport forkguard\nprint(forkguard.fork_mode()['mode'])\n")
    via_env = tmp_path / "tool-env"
    via_env.write_text("#!/usr/bin/env -S python3 -E\nprint('ran')\n")
    plain_env = tmp_path / "tool-plain-env"
    plain_env.write_text("#!/usr/bin/env python3\nimport sys\nprint(sys.modules['forkguard'].fork_mode()['mode'])\n")
    for script in (fake, tool, via_env, plain_env):
        script.chmod(0o755)
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    real_config = "/usr/bin/python3-config"  # Debian's (python3-dev), where installed
    for command in ([str(fake)], *([[real_config]] if os.path.exists(real_config) else [])):
        proc = run(["--fork-mode", "warn", "--", *command], cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr == (
            f"forkguard run: error: {command[0]!r} is not a Python program (a #!/bin/sh shell script), and "
            "forkguard's fork mode 'warn' works inside Python; if it starts Python (a wrapper, a pyenv shim), name "
            "the interpreter; run a Python program (only --fork-mode deny, enforced by the kernel, also holds for "
            "other programs)\n")
    proc = run(["--fork-mode", "warn", "--", str(tool)], cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "warn\n"), proc.stderr
    proc = run(["--fork-mode", "warn", "--", str(via_env)], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "-E ignores PYTHONPATH (given on its #! line)" in proc.stderr
    proc = run(["--fork-mode", "warn", "--", str(plain_env)], cwd=tmp_path, env=env)
    assert (proc.returncode, proc.stdout) == (0, "warn\n"), proc.stderr


@pytest.mark.slow
def test_pips_sh_launcher_in_a_venv_whose_path_has_a_space_runs_under_the_policy(tmp_path):
    """pip writes `#!/bin/sh` + `'''exec' "/path/python" "$0" "$@"` when the interpreter path has a space."""
    import zipfile

    venv = tmp_path / "my venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    wheel = tmp_path / "fgprobe-1.0-py3-none-any.whl"
    probe = ("import json, os, sys\n"
             "def main():\n"
             "    fg = sys.modules.get('forkguard')\n"
             "    try:\n"
             "        os.fork()\n"
             "        result = 'forked'\n"
             "    except OSError as exc:\n"
             "        result = str(exc)\n"
             "    print(json.dumps({'loaded': fg is not None, 'mode': fg and fg.fork_mode(), 'fork': result,\n"
             "                      'python': sys.executable}))\n")
    files = {"fgprobe.py": probe,
             "fgprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: fgprobe\nVersion: 1.0\n",
             "fgprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             "fgprobe-1.0.dist-info/entry_points.txt": "[console_scripts]\nfgprobe = fgprobe:main\n"}
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        record = [*files, "fgprobe-1.0.dist-info/RECORD"]
        zf.writestr("fgprobe-1.0.dist-info/RECORD", "".join(f"{name},,\n" for name in record))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-index", "--no-deps", "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    launcher = venv / "bin" / "fgprobe"
    head = launcher.read_text().splitlines()
    assert head[:3] == ["#!/bin/sh", f"'''exec' \"{venv}/bin/python\" \"$0\" \"$@\"", "' '''"]  # pip's form
    for enforce in ("kernel", "python"):
        proc = run(["--fork-mode", "deny", "--enforce", enforce, "--", str(launcher)], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["loaded"] and out["python"] == f"{venv}/bin/python"
        assert out["mode"]["mode"] == "deny" and "denied by forkguard" in out["fork"]
        assert out["mode"]["kernel"] == ({"deny_exec": False} if enforce == "kernel" else None)
    options = tmp_path / "launcher-with-E"  # the same form with an interpreter option
    options.write_text(f"#!/bin/sh\n'''exec' \"{venv}/bin/python\" -E \"$0\" \"$@\"\n' '''\nprint('ran')\n")
    options.chmod(0o755)
    proc = run(["--fork-mode", "warn", "--", str(options)], cwd=tmp_path)
    assert proc.returncode == 2 and "-E ignores PYTHONPATH (given on its launcher line)" in proc.stderr


# ---------------------------------------------------------------------------- wait_for_exit_exec and pre-fork servers

@pytest.mark.parametrize("how", ["console script", "-m gunicorn", "a script importing gunicorn"])
def test_wait_for_exit_exec_refuses_a_pre_fork_server(tmp_path, how):
    (tmp_path / "serve.py").write_text("from gunicorn.app.wsgiapp import run\nopen('started', 'w')\nrun()\n")
    command = {"console script": [str(Path(sys.executable).with_name("gunicorn")), "app:app"],
               "-m gunicorn": [sys.executable, "-m", "gunicorn", "app:app"],
               "a script importing gunicorn": [sys.executable, "serve.py", "app:app"]}[how]
    proc = run(["--fork-mode", "wait_for_exit_exec", "--", *command], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == (
        "forkguard run: error: --fork-mode wait_for_exit_exec would block gunicorn's master in each fork until that "
        "worker exits (pre-fork workers never exec), so it could serve nothing; use --fork-mode warn or deny\n")
    assert not (tmp_path / "started").exists()
    control = run(["--fork-mode", "warn", "--", *command[:-1], "--version"], cwd=tmp_path)
    assert control.returncode == 0 and "(version " in control.stdout + control.stderr


def test_a_multiprocessing_pool_under_wait_for_exit_exec_waits_out_each_worker(tmp_path):
    """README: a pre-fork pool blocks in each fork until that worker exits (here: until the timeout, each time)."""
    program = ("import multiprocessing\n"
               "with multiprocessing.get_context('fork').Pool(2) as pool:\n"
               "    print(pool.map(abs, [-1, -2]))\n")
    proc = run(["--fork-mode", "wait_for_exit_exec", "--fork-timeout", "0.5", "--", sys.executable, "-c", program],
               cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "[1, 2]\n", proc.stderr
    waited = [line for line in proc.stderr.splitlines() if "has neither exec'd nor exited after 0.5 s" in line]
    assert len(waited) == 2, proc.stderr  # one full timeout per worker: the pool could not start without it


# ---------------------------------------------------------------------------- child interpreters

@pytest.mark.parametrize("call", ["subprocess", "os.posix_spawn", "os.posix_spawnp", "os.execv", "os.execve"])
def test_a_child_interpreter_that_could_not_apply_the_policy_is_not_started(tmp_path, call):
    program = f'''
import errno, json, os, subprocess, sys
args = ["python3", "-S", "-c", "open('child-started', 'w')"]
exe = {sys.executable!r}
try:
    if {call!r} == "subprocess":
        subprocess.run(args)
    elif {call!r} == "os.posix_spawn":
        os.waitpid(os.posix_spawn(exe, args, os.environ), 0)
    elif {call!r} == "os.posix_spawnp":
        os.waitpid(os.posix_spawnp("python3", args, os.environ), 0)
    elif {call!r} == "os.execv":
        os.execv(exe, args)
    else:
        os.execve(exe, args, dict(os.environ))
    print("not refused")
except OSError as exc:
    print(json.dumps([errno.errorcode[exc.errno], str(exc)]))
'''
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = run(["--exit-mode", "kill_children", "--", sys.executable, "-c", program], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    code, message = json.loads(proc.stdout)
    assert code == "ENOTSUP" and message.startswith("[Errno 95] forkguard: not starting ")
    assert "python3 -S -c open('child-started', 'w')" in message
    assert message.endswith("-S skips the site module, which imports sitecustomize (given on the command line), so "
                            "it would run without forkguard's exit mode 'kill_children'; start it without that option")
    assert not (tmp_path / "child-started").exists()


def test_a_child_interpreter_with_nothing_to_apply_starts(tmp_path):
    """Under --fork-mode allow (or deny held by the kernel) a -S child loses nothing, so it starts."""
    program = "import subprocess, sys\nprint(subprocess.run([sys.executable, '-S', '-c', 'print(7)']).returncode)"
    for options in (["--fork-mode", "allow"], ["--fork-mode", "deny"]):
        proc = run([*options, "--", sys.executable, "-c", program], cwd=tmp_path)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "7\n0\n", "")


def test_a_child_given_its_own_pythonpath_still_gets_the_policy(tmp_path):
    program = ("import os, subprocess, sys\n"
               "env = dict(os.environ, PYTHONPATH='somewhere-else')\n"
               "code = 'import sys; print(sys.modules[\"forkguard\"].fork_mode()[\"mode\"],'\n"
               "code += ' \"somewhere-else\" in str(sys.path))'\n"
               "print(subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True).stdout)")
    proc = run(["--fork-mode", "warn", "--", sys.executable, "-c", program], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["warn", "True"]


def test_a_child_that_cannot_import_forkguard_stops_with_one_line(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('half-installed')\n")
    program = ("import os, subprocess, sys\n"
               "env = dict(os.environ, FORKGUARD_PACKAGE_DIR=sys.argv[1])\n"
               "c = subprocess.run([sys.executable, '-c', 'open(\"child-started\", \"w\")'], env=env,\n"
               "                   capture_output=True, text=True)\n"
               "print(c.returncode, repr(c.stderr))")
    proc = run(["--fork-mode", "warn", "--", sys.executable, "-c", program, str(broken)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rc, stderr = proc.stdout.split(" ", 1)
    assert rc == "2" and eval(stderr) == (
        "forkguard: cannot apply the policy: ImportError: half-installed; not starting "
        f"'{sys.executable} -c open(\"child-started\", \"w\")' without the policy forkguard run gave it\n")
    assert not (tmp_path / "child-started").exists()


def test_no_new_privs_under_the_kernel_rule_keeps_a_setuid_program_from_gaining_root(tmp_path):
    """forkguard run, run by an unprivileged user: a setuid-root copy of id(1) stays that user under the rule."""
    import tempfile

    python = "/usr/bin/python3"
    assert os.path.exists(python), "the system Python (readable by nobody) is part of CI's Debian image"
    where = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        where.chmod(0o755)
        setuid_id = where / "id"
        shutil.copy("/usr/bin/id", setuid_id)
        setuid_id.chmod(0o4755)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
        plain = subprocess.run([*as_nobody, str(setuid_id), "-u"], capture_output=True, text=True, cwd=where)
        ruled = subprocess.run([*as_nobody, python, "-m", "forkguard", "run", "--fork-mode", "deny", "--",
                                str(setuid_id), "-u"], capture_output=True, text=True, cwd=where, env=env, timeout=60)
        assert plain.stdout == "0\n"  # the control: setuid works here
        assert ruled.returncode == 0 and ruled.stdout == f"{pwd.getpwnam('nobody').pw_uid}\n", ruled.stderr
    finally:
        shutil.rmtree(where)
