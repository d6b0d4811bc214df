"""Inherited files and sockets with real forks: offsets, contents, reachability, flags and fd numbers."""

from __future__ import annotations

import pytest
from conftest import FORK_HELPER, run_json, run_python

OFFSETS = '''
import forkguard
path = {path!r}
with open(path, "wb") as f:
    f.write(b"0123456789abcdef")
fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
os.read(fd, 2)                                      # the parent is at offset 2
POLICY
if {unlink}:
    os.unlink(path)                                 # reopen goes through /proc/self/fd: deleted files work
def child():
    if {use_dup}:
        mine = os.dup(fd)                           # seed 001's advice: a duplicate
        data = os.read(mine, 3)
    else:
        data = os.read(fd, 3)
    return [data.decode(), os.lseek(fd, 0, os.SEEK_CUR), os.get_inheritable(fd)]
child_view = in_child(child)
print(json.dumps({{"child": child_view, "parent_reads": os.read(fd, 3).decode(), "fd": fd}}))
'''


@pytest.mark.parametrize("policy, use_dup, unlink, parent_reads", [
    ("forkguard.track(fd, 'reopen')", False, False, "234"),   # own description: the parent's offset did not move
    ("forkguard.track(fd, 'reopen')", False, True, "234"),
    ("", False, False, "567"),                                # control: POSIX shares the offset
    ("", True, False, "567"),                                 # control: a dup() shares it too
])
def test_reopen_gives_the_child_its_own_offset(tmp_path, policy, use_dup, unlink, parent_reads):
    # readme: inherited resources / share
    # readme: inherited resources / reopen
    code = OFFSETS.format(path=str(tmp_path / "data"), use_dup=use_dup, unlink=unlink).replace("POLICY", policy)
    out = run_json(FORK_HELPER + code)
    assert out["child"][0] == "234"
    assert out["parent_reads"] == parent_reads
    if policy:
        assert out["child"][1:] == [5, False]   # same fd number still works, close-on-exec kept


def test_reopen_keeps_append_and_access_flags(tmp_path):
    path = tmp_path / "log"
    out = run_json(FORK_HELPER + f'''
import forkguard
log = open({str(path)!r}, "a", buffering=1)
log.write("parent 1\\n")
forkguard.track(log, "reopen")
fd = log.fileno()
def child():
    log.write("child\\n")
    return [fd == log.fileno(), [i.flags for i in forkguard.inherited() if i.fd == fd][0]]
child_view = in_child(child)
log.write("parent 2\\n")
log.close()
print(json.dumps(child_view))
''')
    assert out == [True, "w,append"]
    assert path.read_text() == "parent 1\nchild\nparent 2\n"   # O_APPEND kept: nothing overwritten


DOUBLED = '''
import forkguard
out = open({path!r}, "w")                   # buffered: "hello" waits in the buffer
out.write("hello\\n")
TRACK
def child():
    out.close()                             # like interpreter exit: flushes whatever is buffered
    return True
in_child(child)
out.close()
print(json.dumps(open({path!r}).read()))
'''


@pytest.mark.parametrize("tracked, expected", [(True, "hello\n"), (False, "hello\nhello\n")],
                         ids=["tracked", "control"])
def test_tracked_writer_is_flushed_before_the_fork_so_output_is_not_doubled(tmp_path, tracked, expected):
    code = DOUBLED.format(path=str(tmp_path / "out")).replace("TRACK", "forkguard.track(out)" if tracked else "")
    assert run_json(FORK_HELPER + code) == expected


SERVER = FORK_HELPER + '''
import socket, threading, forkguard
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(16)
accepted = []
def serve():
    while True:
        conn, peer = server.accept()
        accepted.append(peer[1])
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
def echo(conn):
    while data := conn.recv(1024):
        conn.sendall(b"echo:" + data)
threading.Thread(target=serve, daemon=True).start()
client = socket.create_connection(server.getsockname())
def roundtrip(sock, text):
    sock.sendall(text.encode())
    return sock.recv(1024).decode()
'''


def test_close_closes_the_childs_descriptor_only():
    # readme: inherited resources / close
    out = run_json(SERVER + '''
forkguard.track(client, "close")
child = in_child(lambda: [client.fileno(), roundtrip(client, "x") if client.fileno() >= 0 else None])
print(json.dumps({"child": child, "parent": roundtrip(client, "still here")}))
''')
    assert out["child"] == [-1, None]
    assert out["parent"] == "echo:still here"


def test_keep_lets_the_child_use_the_connection_and_reconnect_gives_it_its_own():
    # readme: inherited resources / keep
    # readme: inherited resources / reconnect=f
    out = run_json(SERVER + '''
other = socket.create_connection(server.getsockname())
forkguard.track(client, "keep")
forkguard.track(other, reconnect=lambda old: socket.create_connection(server.getsockname()))
fd_before = other.fileno()
time_ports = list(accepted)
def child():
    return {"keep": roundtrip(client, "kept"), "reconnect": roundtrip(other, "new"),
            "same_fd": other.fileno() == fd_before, "my_port": other.getsockname()[1]}
child_view = in_child(child)
print(json.dumps({"child": child_view, "parent_other": roundtrip(other, "parent"),
                  "parent_port": other.getsockname()[1], "accepted": accepted}))
''')
    child = out["child"]
    assert child["keep"] == "echo:kept"
    assert child["reconnect"] == "echo:new" and child["same_fd"]
    assert child["my_port"] != out["parent_port"] and child["my_port"] in out["accepted"]
    assert out["parent_other"] == "echo:parent"        # the parent's connection was not touched


@pytest.mark.parametrize("preset", ["seed", "posix"])
def test_presets_decide_untracked_sockets(preset):
    out = run_json(SERVER + f'''
forkguard.set_inherit_preset({preset!r})
def child():
    kinds = {{i.fd: i.kind for i in forkguard.inherited()}}
    return [kinds[server.fileno()], kinds[client.fileno()], roundtrip(client, "client kept")]
child_view = in_child(child)
print(json.dumps({{"child": child_view, "parent_accepts": roundtrip(socket.create_connection(server.getsockname()),
                                                                      "after")}}))
''')
    listening, connected, echoed = out["child"]
    assert listening == ("char" if preset == "seed" else "socket")   # seed: /dev/null holds the number
    assert connected == "socket" and echoed == "echo:client kept"
    assert out["parent_accepts"] == "echo:after"                    # the parent still listens


def test_inherited_describes_each_kind_of_descriptor_in_this_and_another_process(tmp_path):
    out = run_json(f'''
import json, os, select, socket, subprocess, sys
import forkguard
path = {str(tmp_path / "f")!r}
f = open(path, "w+"); f.write("abcdef"); f.flush(); f.seek(4)
r, w = os.pipe()
ev = os.eventfd(0)
ep = select.epoll()
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
mine = {{i.fd: [i.kind, i.offset, i.cloexec, (i.socket or {{}}).get("state")] for i in forkguard.inherited()}}
hold = "import os,time; fd=os.open({str(tmp_path / 'f')!r}, os.O_RDONLY); os.lseek(fd, 3, 0); print(fd, flush=True); "
holder = subprocess.Popen([sys.executable, "-c", hold + "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
held = int(holder.stdout.readline())
theirs = {{i.fd: [i.kind, i.offset, i.target] for i in forkguard.inherited(holder.pid)}}
holder.kill(); holder.wait()
print(json.dumps({{"mine": mine, "fds": [f.fileno(), r, ev, ep.fileno(), listener.fileno(), unix.fileno()],
                  "theirs": theirs[held]}}))
''')
    mine = {int(k): v for k, v in out["mine"].items()}
    file_fd, pipe_fd, ev_fd, ep_fd, listen_fd, unix_fd = out["fds"]
    assert mine[file_fd] == ["file", 4, True, None]
    assert mine[pipe_fd][0] == "pipe" and mine[pipe_fd][2] is True   # os.pipe() is close-on-exec since 3.4
    assert mine[ev_fd][0] == "eventfd" and mine[ep_fd][0] == "epoll"
    assert mine[listen_fd] == ["socket", None, True, "listening"]
    assert mine[unix_fd][0] == "socket" and mine[unix_fd][3] == "unconnected"
    assert out["theirs"] == ["file", 3, str(tmp_path / "f")]


@pytest.mark.parametrize("code, error", [
    ("forkguard.track('nope')", "cannot track str: give a file object, a socket or a file descriptor number"),
    ("forkguard.track(open(__file__), 'teleport')", "'teleport' is not a policy"),
    ("forkguard.track(socket.socket(), 'reopen')", "a socket cannot be reopened"),
    ("forkguard.track(open(__file__), 'keep')", "keep applies to sockets"),
    ("forkguard.track(os.pipe()[0], 'reopen')", "reopen applies to regular files"),
    ("f = open(__file__); f.close(); forkguard.track(f)", "has no open descriptor"),
    ("forkguard.track(socket.socket(), reconnect=5)", "reconnect must be callable"),
    ("forkguard.set_inherit_preset('paranoid')", "'paranoid' is not a preset; use one of posix, seed"),
])
def test_bad_input_is_refused_and_nothing_is_tracked(tmp_path, code, error):
    script = tmp_path / "bad.py"
    script.write_text(f'''
import json, os, socket, forkguard
try:
    {code}
    message = None
except (TypeError, ValueError) as exc:
    message = str(exc)
print(json.dumps({{"message": message, "tracked": len(forkguard.tracked())}}))
''')
    out = run_json(f"exec(open({str(script)!r}).read(), {{'__file__': {str(script)!r}}})")
    assert error in out["message"]
    assert out["tracked"] == 0


def test_untrack_and_missing_object():
    proc = run_python('''
import forkguard, socket
s = socket.socket()
forkguard.track(s, "close")
assert [t.policy for t in forkguard.tracked()] == ["close"]
forkguard.untrack(s)
assert forkguard.tracked() == []
try:
    forkguard.untrack(s)
except ValueError as exc:
    print(exc)
''')
    assert "is not tracked" in proc.stdout
