"""Two-stage retrieval: the reranker kinds (a second model over stored files, a second index), what results
say about their stage, and the two-stage evaluation's ranks against a brute-force ranking."""
import json
import os
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from clipforge.errors import UsageError
from clipforge.evaluate.two_stage_retrieval import two_stage_ranks
from clipforge.retrieval.build import build_index
from clipforge.retrieval.index_dir import INFO_FILE
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.retrieval.rerank import RERANKERS, create_reranker
from clipforge.retrieval.search_query import SearchQuery
from clipforge.retrieval.store import EmbeddingStore
from clipforge.serve.app import create_app


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_two_stage(t1, i1, t2, i2, t2i, k):
    """The two-stage ranking written out: sort stage 1 (ties: lower index), re-sort its top k by stage 2
    (ties: stage 1 order), append the rest; 1-based rank of each query's image."""
    out = []
    for q in range(len(t1)):
        s1 = i1 @ t1[q]
        order = sorted(range(len(i1)), key=lambda j: (-s1[j], j))
        cand, rest = order[:k], order[k:]
        s2 = i2 @ t2[q]
        cand = sorted(cand, key=lambda j: (-s2[j], cand.index(j)))
        out.append((cand + rest).index(int(t2i[q])) + 1)
    return np.array(out)


def test_two_stage_ranks_match_a_brute_force_ranking():
    rng = np.random.default_rng(0)
    n, m, d = 40, 60, 16
    truth = rng.normal(size=(n, d))
    t2i = rng.integers(n, size=m)
    i1, t1 = _unit(truth + 2.0 * rng.normal(size=(n, d))), _unit(truth[t2i] + 2.0 * rng.normal(size=(m, d)))
    i2, t2 = _unit(truth + 0.3 * rng.normal(size=(n, d))), _unit(truth[t2i] + 0.3 * rng.normal(size=(m, d)))
    for k in (1, 5, 12, n):
        r = two_stage_ranks(t1, i1, t2, i2, t2i, k)
        np.testing.assert_array_equal(r["rerank"], _brute_two_stage(t1, i1, t2, i2, t2i, k))
        assert (r["rerank"] <= k).tolist() == r["candidate"].tolist()
        # on the queries whose image is a candidate, the two-stage rank is never worse than the second model's
        # rank over the whole collection (fewer images compete)
        assert (r["rerank"][r["candidate"]] <= r["stage2"][r["candidate"]]).all()
    full = two_stage_ranks(t1, i1, t2, i2, t2i, n)
    np.testing.assert_array_equal(full["rerank"], full["stage2"])  # everything re-scored: the second model's ranking
    one = two_stage_ranks(t1, i1, t2, i2, t2i, 1)
    np.testing.assert_array_equal(one["rerank"], one["stage1"])  # one candidate: nothing to re-order
    assert (full["stage2"] <= 1).mean() > (full["stage1"] <= 1).mean()  # the strong model is stronger here


def test_eval_two_stage_with_the_same_model_changes_nothing(photos_demo, tmp_path):
    from clipforge.evaluate.runner import run_eval

    manifest = tmp_path / "pairs.jsonl"
    with open(manifest, "w") as f:
        for name in sorted(os.listdir(photos_demo["images_dir"])):
            if name.endswith(".png"):
                cap = open(os.path.join(photos_demo["images_dir"], name[:-4] + ".txt")).read().strip()
                f.write(json.dumps({"image": os.path.join(photos_demo["images_dir"], name), "caption": cap}) + "\n")
    rec = run_eval("tiny", "zeroshot-retrieval", f"jsonl:{manifest}", rerank="tiny", rerank_k=5, cutoff=10,
                   progress=False)
    m = rec["metrics"]
    assert rec["config"]["rerank_k"] == 5
    for name in ("R@1", "R@5", "MRR", "AP@10", "nDCG@10", "mean_rank"):
        assert m[f"rerank_t2i_{name}"] == pytest.approx(m[f"t2i_{name}"])
        assert m[f"stage2_t2i_{name}"] == pytest.approx(m[f"t2i_{name}"])
    assert m["candidates_R@5"] == pytest.approx(m["t2i_R@5"])
    with pytest.raises(UsageError, match="rerank_k"):
        run_eval("tiny", "zeroshot-retrieval", f"jsonl:{manifest}", rerank="tiny", rerank_k=0, progress=False)


@pytest.fixture(scope="module")
def two_indexes(photos_demo, tiny_checkpoint, tmp_path_factory):
    """The photos demo indexed by the tiny model (stage 1) and by another tiny model (seed 1: stage 2)."""
    root = tmp_path_factory.mktemp("rerank")
    src = f"files:{photos_demo['images_dir']}"
    second = tiny_checkpoint(1)
    build_index(src, "tiny", root / "first", batch_size=8, progress=False)
    build_index(src, second, root / "second", batch_size=8, progress=False)
    return root / "first", root / "second", second


def test_index_reranker_rescores_the_top_k_with_the_second_models_vectors(two_indexes):
    first, second, _ = two_indexes
    eng = IndexSearcher(first, rerank=str(second), rerank_k=6)
    assert eng.reranker.name == "index"
    plain = eng.search("a photo of a cat", k=22, rerank=False)
    hits = eng.search("a photo of a cat", k=22)
    assert [h.stage for h in hits] == [2] * 6 + [1] * 16
    assert {h.id for h in hits[:6]} == {h.id for h in plain[:6]}  # the same candidates, re-ordered
    assert [h.id for h in hits[6:]] == [h.id for h in plain[6:]]  # the rest keep stage 1's order
    assert [h.rank for h in hits] == list(range(22))
    with EmbeddingStore.open(second) as store:
        x, ids = store.load("img")
        keys = store.metadata(["key"]).column("key").to_pylist()
    vec = dict(zip(keys, x))
    q2 = eng.reranker.query_vector(SearchQuery("a photo of a cat").all_terms())
    for h in hits[:6]:
        assert h.score == pytest.approx(float(vec[h.metadata["key"]] @ q2), abs=1e-5)
        assert h.stage1_score == pytest.approx(next(p.score for p in plain if p.id == h.id))
    assert [h.score for h in hits[:6]] == sorted((h.score for h in hits[:6]), reverse=True)
    page = eng.search("a photo of a cat", k=3, offset=3)
    assert [h.id for h in page] == [h.id for h in hits[3:6]]
    assert eng.stats()["rerank"]["kind"] == "index" and eng.stats()["rerank"]["rerank_k"] == 6


def test_model_reranker_scores_the_stored_files_like_the_second_index(two_indexes):
    first, second, second_model = two_indexes
    by_index = IndexSearcher(first, rerank=str(second), rerank_k=8).search("a rocket", k=8)
    model_eng = IndexSearcher(first, rerank=second_model, rerank_k=8)
    assert model_eng.reranker.name == "model"
    by_model = model_eng.search("a rocket", k=8)
    # the same model on the same files through the same decoder: the same order (stored vectors are float16)
    assert [h.id for h in by_model] == [h.id for h in by_index]
    np.testing.assert_allclose([h.score for h in by_model], [h.score for h in by_index], atol=2e-3)
    assert model_eng.reranker.embedded == 8
    model_eng.search("a rocket", k=8)
    assert model_eng.reranker.embedded == 8  # candidates' embeddings are cached


def test_a_candidate_whose_file_is_gone_keeps_its_first_stage_place(photos_demo, tmp_path):
    src = tmp_path / "images"
    shutil.copytree(photos_demo["images_dir"], src)
    idx = tmp_path / "idx"
    build_index(f"files:{src}", "tiny", idx, batch_size=8, progress=False)
    eng = IndexSearcher(idx, rerank="tiny", rerank_k=5)
    top = eng.search("a cup of coffee", k=5, rerank=False)
    os.remove(src / top[0].metadata["key"])
    hits = eng.search("a cup of coffee", k=5)
    assert [h.stage for h in hits] == [2, 2, 2, 2, 1] and hits[-1].id == top[0].id
    assert sum(eng.reranker.skipped.values()) >= 1


def test_reranker_errors_name_parameters(photos_index):
    with pytest.raises(UsageError, match="rerank_k"):
        IndexSearcher(photos_index, rerank="tiny", rerank_k=0)
    with pytest.raises(UsageError, match="rerank"):
        IndexSearcher(photos_index).search("a cat", rerank=True)
    with pytest.raises(UsageError):
        create_reranker(42)
    assert set(RERANKERS.names()) >= {"model", "index"}


def test_serve_results_say_which_stage_scored_them(two_indexes):
    first, second, _ = two_indexes
    app = create_app(first, rerank=str(second), rerank_k=4, reload_interval=None)
    c = TestClient(app)
    res = c.post("/search", json={"text": "a horse", "k": 6}).json()["results"]
    assert [r["stage"] for r in res] == [2, 2, 2, 2, 1, 1]
    assert all("stage1_score" in r for r in res[:4])
    plain = c.post("/search", json={"text": "a horse", "k": 6, "rerank": False}).json()["results"]
    assert [r["stage"] for r in plain] == [1] * 6
    # with a second stage the schema takes `rerank: true` (a server without one refuses it in its schema)
    assert {"type": "boolean"} in app.openapi()["components"]["schemas"]["SearchIn"]["properties"]["rerank"]["anyOf"]
    asked = c.post("/search", json={"text": "a horse", "k": 6, "rerank": True}).json()["results"]
    assert [r["stage"] for r in asked] == [2, 2, 2, 2, 1, 1]
    stats = c.get("/stats").json()["rerank"]
    assert stats["kind"] == "index" and "/" not in stats["index"]  # no server paths
