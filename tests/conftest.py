"""Shared helpers: run a Python snippet in a fresh interpreter, compile a C fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the trace and check tests `tools`: CI runs the rest (the runtime) on every CPython it has."""
    for item in items:
        if item.path.name.startswith(("test_trace", "test_check")):
            item.add_marker(pytest.mark.tools)


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 60,
               cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter (fresh forkguard state) and return the finished process."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd or ROOT)])}
    for name in [n for n in full_env if n.startswith("FORKGUARD_") and n != "FORKGUARD_REQUIRE_BPF"]:
        full_env.pop(name)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snippet failed with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_json(code: str, **kwargs: object) -> object:
    """Run a snippet whose last stdout line is JSON; return it parsed."""
    proc = run_python(code, **kwargs)  # type: ignore[arg-type]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"snippet printed nothing; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def compile_shared(source: str, out_dir: Path, name: str) -> Path:
    """Compile C ``source`` into ``out_dir/lib<name>.so`` with gcc; fail the test if gcc fails."""
    src = out_dir / f"{name}.c"
    lib = out_dir / f"lib{name}.so"
    src.write_text(textwrap.dedent(source))
    proc = subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-pthread", "-o", str(lib), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"gcc failed:\n{proc.stderr}")
    return lib


# A child-side helper inlined in snippets: fork, run body in the child, send its JSON result back.
FORK_HELPER = '''
import json, os, sys, traceback

def in_child(body, fork=os.fork):
    """Fork with ``fork``, run ``body()`` in the child, return its JSON-able result in the parent."""
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        os.close(r)
        try:
            out = {"ok": body()}
        except BaseException:
            out = {"error": traceback.format_exc()}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    result = json.loads(data)
    if "error" in result:
        raise AssertionError("child failed:\\n" + result["error"])
    return result["ok"]
'''


@pytest.fixture(scope="session")
def postgres_dsn():
    """A real PostgreSQL server in a temp dir (unix socket only), for the session. `.ci/run` installs it."""
    import glob
    import pwd
    import shutil
    import tempfile
    import time

    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (as .ci/run does)")
    bindir = bindirs[-1]
    base = tempfile.mkdtemp(prefix="forkguard-pg-", dir="/tmp")
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chmod(base, 0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(base, "data")
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = "5433"
    server = subprocess.Popen([*as_user, f"{bindir}/postgres", "-D", data, "-k", base, "-p", port,
                               "-c", "listen_addresses="], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dsn = f"host={base} port={port} user=postgres dbname=postgres"
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(dsn).close()
            break
        except psycopg.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"PostgreSQL did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    yield dsn
    server.terminate()
    server.wait(30)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def bpf():
    """BPF must load here; under FORKGUARD_REQUIRE_BPF=1 (CI) a failure fails the test instead of skipping it."""
    from forkguard.trace import TraceError, Tracer

    try:
        Tracer(os.getpid()).start().close()
    except TraceError as exc:
        if os.environ.get("FORKGUARD_REQUIRE_BPF") == "1":
            pytest.fail(f"BPF is required here (FORKGUARD_REQUIRE_BPF=1) but cannot be loaded: {exc}")
        pytest.skip(f"BPF cannot be loaded here: {exc}")


def unprivileged_python() -> str:
    """An interpreter user ``nobody`` can start: pyenv's under /root (mode 0700) cannot load its libpython."""
    import shutil

    for candidate in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                         candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    pytest.fail("no Python interpreter that user nobody can run (install Debian's python3)")


def require_tool(name: str) -> str:
    """An external tool's path; missing, the test skips, or fails under FORKGUARD_REQUIRE_BPF=1 (CI installs it)."""
    import shutil

    path = shutil.which(name)
    if path is None:
        if os.environ.get("FORKGUARD_REQUIRE_BPF") == "1":
            pytest.fail(f"{name} is required in CI (.ci/run installs it) but is not on PATH")
        pytest.skip(f"{name} is not installed")
    return path
