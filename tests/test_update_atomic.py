"""`index update` is one atomic swap: a reader (a fresh `IndexView`, or a running `IndexSearcher.refresh`) sees the
index before the update or after it, never in between (removals without the additions, half the new shards).

Every file the update publishes goes through `os.replace` (clipforge.atomic); the tests look at the index
directory as a reader would right after each one, so every intermediate state on disk is seen, without timing."""
import os
import shutil

import numpy as np
import pytest

from clipforge.retrieval.build import build_index, update_index
from clipforge.retrieval.index_searcher import IndexView, IndexSearcher
from clipforge.retrieval.store import EmbeddingStore


def _folder(photos_demo, dst, names):
    os.makedirs(dst, exist_ok=True)
    for f in names:
        shutil.copy2(os.path.join(photos_demo["images_dir"], f), dst)
        shutil.copy2(os.path.join(photos_demo["images_dir"], f[:-4] + ".txt"), dst)


def _keys(view) -> frozenset:
    return frozenset(view.metadata.column("key").to_pylist())


def _watch_publishes(monkeypatch, root, look):
    """Call look() right after every file is renamed into `root` (every commit point of every writer)."""
    real = os.replace
    busy = []

    def replace(src, dst, *a, **kw):
        real(src, dst, *a, **kw)
        if not busy and os.path.dirname(os.path.abspath(dst)).startswith(str(root)):
            busy.append(1)
            try:
                look()
            finally:
                busy.pop()

    monkeypatch.setattr(os, "replace", replace)


@pytest.fixture
def grown(photos_demo, tmp_path):
    """An index of 8 photos (2 per shard), whose folder then loses 2 and gains 3 (the update adds 2 shards)."""
    names = sorted(f for f in os.listdir(photos_demo["images_dir"]) if f.endswith(".png"))
    assert len(names) >= 11
    src, idx = tmp_path / "imgs", tmp_path / "idx"
    _folder(photos_demo, src, names[:8])
    build_index(f"files:{src}", "tiny", idx, batch_size=2, shard_size=2, progress=False)
    for f in names[:2]:
        os.remove(src / f)
    _folder(photos_demo, src, names[8:11])
    return idx, frozenset(names[:8]), frozenset(names[2:11])


def test_readers_see_the_old_or_the_new_index_never_a_part(grown, monkeypatch):
    idx, old, new = grown
    engine = IndexSearcher(idx)  # a server's engine, refreshed at every point (the watcher's call)
    seen_views, seen_engine = [], []

    def look():
        view = IndexView(idx)
        seen_views.append((_keys(view), len(view.index)))
        engine.refresh()
        seen_engine.append((_keys(engine.view), len(engine.index)))

    _watch_publishes(monkeypatch, idx, look)
    s = update_index(idx, progress=False)
    monkeypatch.undo()
    assert (s["added"], s["deleted"], s["embedded"]) == (3, 2, 3)
    assert len(seen_views) >= 3  # the manifest, index.faiss, index.json at least: the points were observed
    for seen in (seen_views, seen_engine):
        states = set(seen)
        assert states <= {(old, len(old)), (new, len(new))}, sorted((len(k), n) for k, n in states)
        assert seen[-1] == (new, len(new))
    with EmbeddingStore.open(idx) as store:  # and the whole update was one new store generation
        assert store.generation == IndexView(idx).generation
    assert engine.reloads >= 1 and len(engine.index) == len(new) == 9


def test_an_update_that_fails_midway_publishes_nothing(grown, monkeypatch):
    idx, old, new = grown
    with EmbeddingStore.open(idx) as store:
        gen = store.generation
    before = {p: p.stat().st_mtime_ns for p in idx.rglob("*") if p.is_file() and not p.name.startswith(".")}
    import clipforge.retrieval.store as store_mod

    calls = []
    real_write = store_mod._atomic_write

    def failing_write(path, write):  # the second new shard's first file: after a delete and one append
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real_write(path, write)

    monkeypatch.setattr(store_mod, "_atomic_write", failing_write)
    with pytest.raises(Exception):
        update_index(idx, progress=False)
    monkeypatch.undo()
    view = IndexView(idx)
    assert (_keys(view), len(view.index), view.generation) == (old, len(old), gen)
    after = {p for p in idx.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert after == set(before), sorted(map(str, after ^ set(before)))  # its shard files are gone
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p.name != "index.json")
    s = update_index(idx, progress=False)  # the next run does the whole update
    assert (s["added"], s["deleted"]) == (3, 2) and _keys(IndexView(idx)) == new


def test_store_transaction_is_one_generation(tmp_path):
    rng = np.random.default_rng(0)
    with EmbeddingStore.create(tmp_path / "s", dim=4) as s:
        s.append([f"k{i}" for i in range(4)], rng.normal(size=(4, 4)))
        gen = s.generation
        with s.transaction():
            s.delete(["k0", "k1"])
            s.append(["k4"], rng.normal(size=(1, 4)))
            s.append(["k2"], rng.normal(size=(1, 4)), replace=True)  # a changed item keeps its id
            assert s.done_keys() == {"k2", "k3", "k4"}  # the writer sees its own changes
            with EmbeddingStore.open(tmp_path / "s") as reader:  # a reader does not, yet
                assert reader.done_keys() == {"k0", "k1", "k2", "k3"} and reader.generation == gen
            s.compact()
        with EmbeddingStore.open(tmp_path / "s") as reader:
            assert reader.done_keys() == {"k2", "k3", "k4"} and reader.generation == gen + 1
            assert sorted(reader.load()[1].tolist()) == [2, 3, 4]
        with pytest.raises(KeyError):
            with s.transaction():
                s.delete(["k3"])
                raise KeyError("stop")
        assert s.done_keys() == {"k2", "k3", "k4"} and s.generation == gen + 1
    with EmbeddingStore.open(tmp_path / "s") as reader:
        assert reader.done_keys() == {"k2", "k3", "k4"} and len(reader.manifest["shards"]) == 1
