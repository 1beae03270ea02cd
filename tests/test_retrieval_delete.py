"""Deleting items from an index: by id, path glob and filter; stable ids across updates; consistency after
kill -9 mid-delete; a IndexSearcher sees deletes and updates via refresh, and searches in flight keep their view."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clipforge.errors import UsageError
from clipforge.retrieval.build import update_index
from clipforge.retrieval.index_dir import INFO_FILE
from clipforge.retrieval.delete import delete_items, select_items
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.retrieval.store import EmbeddingStore


@pytest.fixture
def idx(writable_photos_index):
    return writable_photos_index


def _all_ids(engine):
    return {h.id for h in engine.search("a photo", k=200)}


def _id_of(engine, name):
    return next(h.id for h in engine.search("a photo", k=200) if h.metadata["key"] == name)


def test_delete_by_id_removes_from_search_items_and_the_index_file(idx):
    eng = IndexSearcher(idx)
    before = _all_ids(eng)
    victim = sorted(before)[3]
    res = delete_items(idx, ids=[victim, 10**9])
    assert res["deleted"] == 1 and res["ids"] == [victim] and res["not_found"] == [10**9]
    assert res["count"] == len(before) - 1
    fresh = IndexSearcher(idx)
    assert _all_ids(fresh) == before - {victim}
    assert fresh.item(victim) is None and not fresh.has_id(victim)
    with pytest.raises(UsageError, match="like"):
        fresh.search(like=victim)
    from clipforge.retrieval.sharded import open_index
    assert victim not in set(np.asarray(open_index(idx / "index.faiss").ids()).tolist())  # the file itself


def test_delete_by_filter_and_by_path_glob(idx):
    eng = IndexSearcher(idx)
    keys = {h.metadata["key"]: h.id for h in eng.search("a photo", k=200)}
    want = {k for k in keys if k.startswith("c")}
    assert want
    assert {r["key"] for r in select_items(idx, filters=["key~c*"])} == want  # what would go
    res = delete_items(idx, filters=["key~c*"], dry_run=True)
    assert res["deleted"] == len(want) and len(IndexSearcher(idx).search("a photo", k=200)) == len(keys)
    res = delete_items(idx, filters=["key~c*"])
    assert set(res["keys"]) == want
    left = {h.metadata["key"] for h in IndexSearcher(idx).search("a photo", k=200)}
    assert left == set(keys) - want
    res = delete_items(idx, paths=["*/horse.png"])  # a glob over the absolute path
    assert res["keys"] == ["horse.png"]
    assert "horse.png" not in {h.metadata["key"] for h in IndexSearcher(idx).search("a photo", k=200)}


def test_exactly_one_selector_and_bad_filters_are_usage_errors(idx):
    with pytest.raises(UsageError, match="exactly one"):
        delete_items(idx)
    with pytest.raises(UsageError, match="exactly one"):
        delete_items(idx, ids=[1], filters=["key=x"])
    with pytest.raises(UsageError):
        delete_items(idx, filters=["no operator here"])


def test_ids_are_stable_and_deleted_items_stay_out_of_updates(idx):
    eng = IndexSearcher(idx)
    ids = {h.metadata["key"]: h.id for h in eng.search("a photo", k=200)}
    delete_items(idx, ids=[ids["moon.png"]])
    s = update_index(idx, workers=0, progress=False)  # the file is still in the source
    assert s["excluded"] == 1 and s["added"] == 0
    after = {h.metadata["key"]: h.id for h in IndexSearcher(idx).search("a photo", k=200)}
    assert "moon.png" not in after
    assert after == {k: v for k, v in ids.items() if k != "moon.png"}  # every other id unchanged
    update_index(idx, workers=0, progress=False, include_deleted=True)
    back = {h.metadata["key"]: h.id for h in IndexSearcher(idx).search("a photo", k=200)}
    assert "moon.png" in back and back["moon.png"] not in ids.values()  # a new id: never reused


_KILL_SCRIPT = """
import sys, time
import clipforge.retrieval.delete as d
from clipforge.retrieval.store import EmbeddingStore
stage = sys.argv[2]
if stage == "before_commit":
    real = EmbeddingStore.delete_ids
    def slow(self, ids):
        print("READY", flush=True); time.sleep(60); return real(self, ids)
    EmbeddingStore.delete_ids = slow
else:
    def slow(*a, **k):
        print("READY", flush=True); time.sleep(60)
    d._update_index_file = slow
d.delete_items(sys.argv[1], ids=[int(sys.argv[3])])
"""


@pytest.mark.parametrize("stage", ["before_commit", "after_commit"])
def test_kill_9_during_a_delete_leaves_a_consistent_index(idx, stage):
    eng = IndexSearcher(idx)
    before = _all_ids(eng)
    victim = _id_of(eng, "rocket.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(idx), stage, str(victim)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    gone = stage == "after_commit"
    reader = IndexSearcher(idx)  # a fresh reader: the store manifest is the truth, the index file lags
    assert _all_ids(reader) == (before - {victim} if gone else before)
    assert reader.has_id(victim) is not gone
    with EmbeddingStore.open(idx) as store:  # committed state is whole: every live row has metadata
        assert len(store) == len(before) - gone and store.metadata().num_rows == len(store)
    # the next writer takes the lock (freed by the kill) and repairs the index file on its way
    other = _id_of(reader, "horse.png")
    delete_items(idx, ids=[other])
    from clipforge.retrieval.sharded import open_index
    in_file = set(np.asarray(open_index(idx / "index.faiss").ids()).tolist())
    assert in_file == _all_ids(IndexSearcher(idx)) == (before - {victim, other} if gone else before - {other})


def test_refresh_swaps_views_and_in_flight_searches_keep_theirs(idx, photos_demo):
    eng = IndexSearcher(idx)
    old_view = eng.view
    victim = _id_of(eng, "coffee.png")
    assert not eng.refresh()  # nothing changed
    delete_items(idx, ids=[victim])
    assert eng.refresh()
    assert victim not in _all_ids(eng) and not eng.has_id(victim)
    # a search that began on the old view finishes on it, unchanged
    assert victim in {h.id for h in old_view.searcher.search(eng.query_vector("a photo"), k=200)}
    # an update (a new file in the source) shows up after refresh, with a new id
    src = json.loads((idx / INFO_FILE).read_text())["source"].split(":", 1)[1]
    shutil.copy(os.path.join(photos_demo["images_dir"], "chelsea.png"), os.path.join(src, "cat-copy.png"))
    update_index(idx, workers=0, progress=False)
    assert eng.refresh()
    keys = {h.metadata["key"] for h in eng.search("a photo", k=200)}
    assert "cat-copy.png" in keys and eng.reloads == 2


def test_watcher_sees_a_delete_within_a_second(idx):
    eng = IndexSearcher(idx)
    victim = _id_of(eng, "clock.png")
    w = eng.watch(0.05)
    try:
        delete_items(idx, ids=[victim])
        t0 = time.monotonic()
        while eng.has_id(victim) and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert not eng.has_id(victim)
        assert time.monotonic() - t0 < 1.0
    finally:
        w.stop()


def test_path_globs_match_names_with_newlines():
    """`*` covers every name: a file whose name holds a newline was silently left out of `index delete --path '*'`."""
    import pyarrow as pa

    from clipforge.retrieval.filters import Filter

    table = pa.table({"path": ["/a/plain.png", "/a/new\nline.png", "/a/esc\x1b.png", "/b/x.png"]})
    assert Filter("path", "~", "*").mask(table).tolist() == [True, True, True, True]
    assert Filter("path", "~", "/a/*.png").mask(table).tolist() == [True, True, True, False]
    assert Filter("path", "~", "/a/new?line.png").mask(table).tolist() == [False, True, False, False]
