"""A real gunicorn server with preload_app: workers fork early, a request's multiprocessing child forks late."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

APP = '''
import json, multiprocessing, os
import forkguard

early_fork_pids = []
feature = forkguard.Feature("native", on_early_fork=lambda: early_fork_pids.append(os.getpid()))

def child_report(queue):
    info = forkguard.fork_info()
    queue.put({"pid": os.getpid(), "enabled": feature.enabled, "kind": info.kind,
               "reason": feature.disabled_reason})

def state():
    info = forkguard.fork_info()
    return {"pid": os.getpid(), "enabled": feature.enabled, "kind": info.kind,
            "early_fork_ran_here": os.getpid() in early_fork_pids}

def app(environ, start_response):
    with feature.context():                      # the request holds native state
        if environ["PATH_INFO"] == "/spawn":
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            proc = ctx.Process(target=child_report, args=(queue,))
            proc.start()
            body = {"child": queue.get(timeout=30), "worker": state()}
            proc.join(10)
        else:
            body = state()
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def gunicorn_server(tmp_path: Path):
    (tmp_path / "fgapp.py").write_text(APP)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--bind", f"127.0.0.1:{port}",
         "--chdir", str(tmp_path), "fgapp:app"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            get(base + "/")
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"gunicorn did not start:\n{server.communicate()[0]}")
            time.sleep(0.1)
    yield base
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.mark.slow
def test_preforked_workers_keep_the_feature_and_a_request_child_loses_it(gunicorn_server):
    workers = {}
    for _ in range(400):  # new connections land on either worker; stop once both answered
        state = get(gunicorn_server + "/")
        workers[state["pid"]] = state
        if len(workers) == 2:
            break
    assert len(workers) == 2, f"only reached workers {sorted(workers)}"
    for state in workers.values():
        assert state["enabled"] is True
        assert state["kind"] == "early"
        assert state["early_fork_ran_here"] is True

    spawned = get(gunicorn_server + "/spawn")
    assert spawned["child"]["enabled"] is False
    assert spawned["child"]["kind"] == "late"
    assert "late fork (native×1)" in spawned["child"]["reason"]
    assert spawned["worker"]["enabled"] is True  # the worker itself is untouched
    assert spawned["child"]["pid"] != spawned["worker"]["pid"]
