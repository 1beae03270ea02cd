"""An index build measures its recall@10 against exact search on the collection's own vectors, records it, and
warns (one line saying what to do) when it is below `min_recall`: a memory budget that leaves room only for
IVF-PQ codes without a re-ranking store once gave recall@10 0.498 in silence (issue 33)."""

import warnings

import numpy as np
import pytest

from clipforge.errors import UsageError
from clipforge.retrieval.build import build_index
from clipforge.retrieval.faiss_build import MIN_RECALL, build_faiss
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.index_dir import read_info
from clipforge.retrieval.recall import exact_knn
from clipforge.retrieval.store import EmbeddingStore


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    """3,000 Gaussian vectors in 64 dimensions: no structure for 8-byte PQ codes to exploit."""
    root = tmp_path_factory.mktemp("recall") / "s"
    x = np.random.default_rng(0).standard_normal((3000, 64)).astype(np.float32)
    with EmbeddingStore.create(root, dim=64) as s:
        s.append([f"k{i}" for i in range(len(x))], x)
    return root


def _our_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "min_recall" in str(w.message)]


def test_coarse_pq_build_warns_and_records_its_recall(random_store):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = build_faiss(random_store, max_memory=60_000)  # room for PQ codes and ids only
    assert out["kind"] == "ivf_pq" and out["params"]["refine"] is None
    rec = out["recall@10"]["recall@10"]
    # the recorded figure is the index's real recall: recompute it on the same stored vectors
    x, ids = EmbeddingStore.open(random_store).load("img")
    q = x[np.random.default_rng(1).choice(len(x), 200, replace=False)]
    got = VectorIndex.load(random_store / "index.faiss").search(q, 10)[1]
    truth = exact_knn(x, q, 10, ids)[1]
    again = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])
    assert rec < MIN_RECALL and again == pytest.approx(rec, abs=0.08)
    msgs = _our_warnings(record)
    assert len(msgs) == 1 and "\n" not in msgs[0] and f"{rec:.3f}" in msgs[0]
    assert "`max_memory`" in msgs[0] and "`index_kind` flat" in msgs[0]  # what to do, in parameter names
    assert out["warning"] == msgs[0] and out["min_recall"] == MIN_RECALL
    # also saved with the index file itself
    assert VectorIndex.load(random_store / "index.faiss").info["recall@10"]["recall@10"] == rec


def test_threshold_is_a_parameter(random_store):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = build_faiss(random_store, max_memory=60_000, min_recall=0.0)
    assert out["recall@10"]["recall@10"] < MIN_RECALL and not _our_warnings(record) and "warning" not in out
    with warnings.catch_warnings(record=True) as record:  # a kind the user named gets advice about kinds
        warnings.simplefilter("always")
        build_faiss(random_store, kind="ivf_pq", min_recall=1.0)
    assert "another `index_kind`" in _our_warnings(record)[0]
    with pytest.raises(UsageError, match="min_recall"):
        build_faiss(random_store, min_recall=1.5)


def test_flat_build_records_exact_recall_without_warning(photos_demo, tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        s = build_index(f"files:{photos_demo['images_dir']}", "tiny", tmp_path / "flat", index_kind="flat",
                        batch_size=8, progress=False)
    idx = read_info(tmp_path / "flat")["index"]  # what index.json says
    assert s["index"]["kind"] == idx["kind"] == "flat"
    assert idx["recall@10"]["recall@10"] == 1.0 and idx["recall@10"]["exact"] is True  # exact search by kind
    assert not _our_warnings(record) and "warning" not in idx
    with pytest.raises(UsageError, match="min_recall"):  # refused before any image is embedded
        build_index(f"files:{photos_demo['images_dir']}", "tiny", tmp_path / "bad", min_recall=-1)
    assert not (tmp_path / "bad").exists()
