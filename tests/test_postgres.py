"""A real PostgreSQL connection across fork: shared, it breaks the parent; ForkLocal and the SQLAlchemy
integration give each process its own and leave the parent's alone."""

from __future__ import annotations

from conftest import run_json

SCRIPT = '''
import json, os, sys
import psycopg
import forkguard
DSN = {dsn!r}
'''


def test_control_a_connection_shared_with_a_child_is_broken_for_the_parent(postgres_dsn):
    out = run_json(SCRIPT.format(dsn=postgres_dsn) + '''
conn = psycopg.connect(DSN, autocommit=True)
conn.execute("select 1")
pid = os.fork()
if pid == 0:
    conn.execute("select 2")      # the child talks on the parent's socket...
    conn.close()                  # ...and ends the session when it is done, as any program does
    os._exit(0)
os.waitpid(pid, 0)
try:
    conn.execute("select 3").fetchone()
    outcome = "still works"
except psycopg.OperationalError as exc:
    outcome = str(exc)
print(json.dumps(outcome))
''')
    assert "server closed the connection unexpectedly" in out


def test_forklocal_gives_each_process_its_own_connection(postgres_dsn):
    out = run_json(SCRIPT.format(dsn=postgres_dsn) + '''
import ctypes, multiprocessing
db = forkguard.ForkLocal(lambda: psycopg.connect(DSN, autocommit=True), close=lambda c: c.close())
def backend():
    return db.get().execute("select pg_backend_pid()").fetchone()[0]
def child_work(queue=None):
    mine = backend()
    db.reset()                    # closes the child's own connection, as a child should at exit
    if queue is not None:
        queue.put(mine)
    return mine
parent = backend()
children = []
for fork in (os.fork, ctypes.CDLL(None).fork):
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        forkguard.check_fork()
        os.write(w, str(child_work()).encode())
        sys.exit(0)               # a normal exit: finalizers run, the inherited connection must survive
    os.close(w)
    children.append(int(os.read(r, 100)))
    os.waitpid(pid, 0)
ctx = multiprocessing.get_context("fork")
queue = ctx.Queue()
proc = ctx.Process(target=child_work, args=(queue,)); proc.start()
children.append(queue.get(timeout=30)); proc.join()
print(json.dumps({"parent": parent, "children": children, "parent_after": backend(),
                  "answer": db.get().execute("select 42").fetchone()[0]}))
''')
    assert len(set(out["children"])) == 3 and out["parent"] not in out["children"]
    assert out["parent_after"] == out["parent"]      # same session, untouched by three children
    assert out["answer"] == 42


def test_sqlalchemy_dispose_in_child_keeps_the_parents_pool_working(postgres_dsn):
    host = dict(item.split("=") for item in postgres_dsn.split())
    url = f"postgresql+psycopg://postgres@/postgres?host={host['host']}&port={host['port']}"
    out = run_json(SCRIPT.format(dsn=postgres_dsn) + f'''
import sqlalchemy
from forkguard.integrations.sqlalchemy import dispose_in_child
engine = sqlalchemy.create_engine({url!r}, pool_size=2)
def backend():
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("select pg_backend_pid()")).scalar()
results = {{}}
for use_integration in (False, True):
    engine.dispose()
    hook = dispose_in_child(engine) if use_integration else None
    parent = backend()
    pid = os.fork()
    if pid == 0:
        child = backend()
        engine.dispose()          # the child closes its pool at exit, as it should
        os._exit(0 if child != parent else 3)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    try:
        after = backend()
    except sqlalchemy.exc.OperationalError:
        after = "broken"
    results["with" if use_integration else "control"] = {{"child_had_own": status == 0, "parent_same": after == parent,
                                                          "after": after}}
    if hook:
        hook.unregister()
print(json.dumps(results))
''')
    assert out["control"]["child_had_own"] is False          # without it the child used the parent's connection
    assert out["control"]["parent_same"] is False             # and the parent lost it (pre-ping-less pool: broken)
    assert out["with"] == {"child_had_own": True, "parent_same": True, "after": out["with"]["after"]}
