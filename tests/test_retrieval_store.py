"""Embedding store: round trip, ids stable across replace/delete/compact, crash safety, clip-retrieval folders."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipforge.errors import ClipforgeError, UsageError
from clipforge.retrieval.store import EmbeddingStore


def _emb(rng, n, d=16):
    return rng.standard_normal((n, d)).astype(np.float32)


def test_round_trip_float16_normalised(tmp_path):
    rng = np.random.default_rng(0)
    x1, x2 = _emb(rng, 5), _emb(rng, 3)
    with EmbeddingStore.create(tmp_path / "s", dim=16, model={"name": "tiny"}) as s:
        ids1 = s.append([f"a{i}" for i in range(5)], x1, metadata={"caption": [f"c{i}" for i in range(5)]})
        ids2 = s.append(["b0", "b1", "b2"], x2, metadata={"caption": ["x", "y", "z"]})
    np.testing.assert_array_equal(ids1, np.arange(5))
    np.testing.assert_array_equal(ids2, [5, 6, 7])
    # clip-retrieval layout on disk
    for rel in ("img_emb/img_emb_0.npy", "img_emb/img_emb_1.npy", "metadata/metadata_1.parquet"):
        assert (tmp_path / "s" / rel).exists(), rel
    assert np.load(tmp_path / "s/img_emb/img_emb_0.npy").dtype == np.float16

    s = EmbeddingStore.open(tmp_path / "s")
    x, ids = s.load()
    want = np.concatenate([x1, x2])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert x.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, np.arange(8))
    np.testing.assert_allclose(x, want, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)
    meta = s.metadata()
    assert meta.column("key").to_pylist() == [f"a{i}" for i in range(5)] + ["b0", "b1", "b2"]
    assert meta.column("caption").to_pylist()[-1] == "z"
    assert s.model == {"name": "tiny"} and s.dim == 16 and len(s) == 8
    assert s.done_ids() == {f"a{i}" for i in range(5)} | {"b0", "b1", "b2"}


def test_replace_delete_compact_keep_ids(tmp_path):
    rng = np.random.default_rng(1)
    s = EmbeddingStore.create(tmp_path, dim=16)
    s.append(["p", "q", "r"], _emb(rng, 3))
    with pytest.raises(UsageError, match="already in the store"):
        s.append(["q"], _emb(rng, 1))
    new_q = _emb(rng, 1)
    assert s.append(["q"], new_q, replace=True).tolist() == [1]  # same id for a re-embedded key
    assert s.delete(["p", "nope"]) == 1
    x, ids = s.load()
    assert sorted(ids.tolist()) == [1, 2] and len(s) == 2
    np.testing.assert_allclose(x[ids == 1][0], new_q[0] / np.linalg.norm(new_q), atol=2e-3)
    assert s.append(["s"], _emb(rng, 1)).tolist() == [3]  # deleted ids are never reused
    before = s.load()
    s.compact()
    after = s.load()
    assert sorted(after[1].tolist()) == [1, 2, 3]
    order = np.argsort(before[1])
    np.testing.assert_array_equal(after[0][np.argsort(after[1])], before[0][order])
    assert s.stats()["deleted"] == 0 and len(list((tmp_path / "img_emb").iterdir())) == 1
    assert EmbeddingStore.open(tmp_path).id_of(["q", "s", "p"]).tolist() == [1, 3, -1]


def test_bad_arguments(tmp_path):
    s = EmbeddingStore.create(tmp_path, dim=4)
    with pytest.raises(UsageError, match="shape"):
        s.append(["a"], np.zeros((1, 5)))
    with pytest.raises(UsageError, match="text_emb not expected"):
        s.append(["a"], np.ones((1, 4)), text_emb=np.ones((1, 4)))
    with pytest.raises(UsageError, match="reserved"):
        s.append(["a"], np.ones((1, 4)), metadata={"id": [3]})
    with pytest.raises(ClipforgeError, match="another process"):
        EmbeddingStore.open(tmp_path, writable=True)  # single writer
    s.close()
    with pytest.raises(UsageError, match="read-only"):
        EmbeddingStore.open(tmp_path).append(["a"], np.ones((1, 4)))
    with pytest.raises(ClipforgeError, match="already exists"):
        EmbeddingStore.create(tmp_path, dim=4)


def test_newer_schema_refused(tmp_path):
    EmbeddingStore.create(tmp_path, dim=4).close()
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ClipforgeError, match="newer"):
        EmbeddingStore.open(tmp_path)


def test_adopts_clip_retrieval_folder(tmp_path):
    """A folder written by clip-retrieval (no manifest, no id column) opens via migration 0 -> 1."""
    rng = np.random.default_rng(2)
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    for i, n in enumerate((4, 3)):
        np.save(tmp_path / f"img_emb/img_emb_{i}.npy", _emb(rng, n, 8).astype(np.float16))
        pq.write_table(pa.table({"image_path": [f"/d/{i}_{j}.jpg" for j in range(n)],
                                 "caption": ["c"] * n}), tmp_path / f"metadata/metadata_{i}.parquet")
    s = EmbeddingStore.open(tmp_path, writable=True)
    x, ids = s.load()
    assert x.shape == (7, 8) and ids.tolist() == list(range(7))
    assert s.metadata().column("key").to_pylist()[4] == "/d/1_0.jpg"
    assert "/d/0_3.jpg" in s.done_keys()
    assert s.append(["/d/new.jpg"], _emb(rng, 1, 8)).tolist() == [7]
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == 1


_WRITER = textwrap.dedent("""
    import os, sys, numpy as np
    from clipforge.retrieval import store as st
    root, crash_at = sys.argv[1], int(sys.argv[2])
    s = st.EmbeddingStore.create(root, dim=8, exist_ok=True)
    real_commit = s._commit
    def commit(m):
        # die (like kill -9) after shard files are on disk but before the manifest names them
        if len(m["shards"]) == crash_at:
            os.kill(os.getpid(), 9)
        real_commit(m)
    s._commit = commit
    done = s.done_keys()
    keys = [f"k{i:03d}" for i in range(40)]
    todo = [k for k in keys if k not in done]
    for start in range(0, len(todo), 7):
        batch = todo[start:start + 7]
        x = np.stack([np.random.default_rng(int(k[1:])).standard_normal(8) for k in batch])
        s.append(batch, x, metadata={"n": [int(k[1:]) for k in batch]})
""")


def test_killed_writer_resumes_without_duplicates_or_gaps(tmp_path):
    root = tmp_path / "s"
    script = tmp_path / "w.py"
    script.write_text(_WRITER)
    r = subprocess.run([sys.executable, str(script), str(root), "3"])
    assert r.returncode == -signal.SIGKILL
    # the third shard's files were written but not committed
    assert (root / "img_emb/img_emb_2.npy").exists()
    s = EmbeddingStore.open(root)
    assert len(s) == 14 and s.load()[0].shape == (14, 8)
    s.close()
    r = subprocess.run([sys.executable, str(script), str(root), "-1"])
    assert r.returncode == 0
    s = EmbeddingStore.open(root)
    meta = s.metadata()
    keys = meta.column("key").to_pylist()
    assert sorted(keys) == [f"k{i:03d}" for i in range(40)]  # no gaps, no duplicates
    x, ids = s.load()
    assert sorted(ids.tolist()) == list(range(40))
    for key, row in zip(keys, x):  # every vector belongs to its key
        v = np.random.default_rng(int(key[1:])).standard_normal(8)
        np.testing.assert_allclose(row, v / np.linalg.norm(v), atol=2e-3)
    assert meta.column("n").to_pylist() == [int(k[1:]) for k in keys]
    assert not [p for p in os.listdir(root / "img_emb") if p.endswith(".tmp")]
