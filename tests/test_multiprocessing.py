"""multiprocessing: the fork start method inherits a live context; spawn and forkserver start fresh."""

from __future__ import annotations

from conftest import run_json

APP = '''
import forkguard
feature = forkguard.Feature("native")

def report(queue):
    info = forkguard.fork_info()
    queue.put({"enabled": feature.enabled, "kind": info.kind, "is_child": info.is_child,
               "generation": info.generation})
'''


def test_start_methods_under_a_live_context(tmp_path):
    (tmp_path / "mpapp.py").write_text(APP)
    out = run_json('''
import json, multiprocessing as mp
import mpapp
results = {}
with mpapp.feature.context():
    for method in ("fork", "spawn", "forkserver"):
        ctx = mp.get_context(method)
        queue = ctx.Queue()
        proc = ctx.Process(target=mpapp.report, args=(queue,))
        proc.start()
        results[method] = queue.get(timeout=60)
        proc.join(30)
    results["parent_enabled"] = mpapp.feature.enabled
print(json.dumps(results))
''', cwd=tmp_path, timeout=120)
    assert out["fork"] == {"enabled": False, "kind": "late", "is_child": True, "generation": 1}
    # spawn and forkserver children import the app afresh: a new feature, enabled, not a late fork.
    for method in ("spawn", "forkserver"):
        assert out[method]["enabled"] is True, method
        assert out[method]["kind"] != "late", method
    assert out["parent_enabled"] is True


def test_fork_pool_workers_forked_outside_a_context_keep_the_feature(tmp_path):
    (tmp_path / "mpapp.py").write_text(APP + '''
def state(_):
    info = forkguard.fork_info()
    return [feature.enabled, info.kind]
''')
    out = run_json('''
import json, multiprocessing as mp
import mpapp
with mp.get_context("fork").Pool(2) as pool:       # workers forked before any request: early
    early = pool.map(mpapp.state, range(4))
with mpapp.feature.context():
    with mp.get_context("fork").Pool(2) as pool:   # forked while a request is live: late
        late = pool.map(mpapp.state, range(4))
print(json.dumps({"early": early, "late": late}))
''', cwd=tmp_path, timeout=120)
    assert out["early"] == [[True, "early"]] * 4
    assert out["late"] == [[False, "late"]] * 4
