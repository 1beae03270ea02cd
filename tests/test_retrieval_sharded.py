"""Sharded index build + merge: merged results equal one index's (exact kinds, and IVF from one training),
ground truth from numpy brute force (a full sort here, sharing no code with the merge under test), query-time
merging of HNSW shards, `merge_topk` itself (ties, k beyond the candidates, empty shards), on-disk inverted
lists, errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from clipforge.errors import UsageError
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.sharded import (ShardedIndex, build_shard, merge_shards, open_index,
                                         train_template)
from clipforge.retrieval.synthetic import synthetic_embeddings
from clipforge.retrieval.topk import merge_topk

_SMALL = {"flat": {}, "ivf_flat": {"nlist": 64, "nprobe": 8}, "ivf_pq": {"nlist": 64, "nprobe": 8, "m": 16},
          "ivf_pqfs": {"nlist": 64, "nprobe": 8, "m": 32, "quantizer": "hnsw"}, "hnsw": {"M": 16, "efConstruction": 40,
                                                                    "efSearch": 48}}


@pytest.fixture(scope="module")
def data():
    xb, q = synthetic_embeddings(20_000, 64, rank=16, seed=1, n_queries=200)
    ids = np.random.default_rng(2).choice(10**12, len(xb), replace=False).astype(np.int64)  # collection ids
    return xb, q, ids


def _parts(n, n_parts=4, seed=3):
    """Uneven random partition of row numbers (shards are rarely equal in practice)."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), n_parts - 1, replace=False))
    return np.split(order, cuts)


def _brute_force(xb, q, k, ids):
    """Exact top k by numpy: every score, one full sort per query (descending score, then ascending id), -1 / -inf
    past the collection's end. Deliberately not `recall.exact_knn`, which merges blocks with `merge_topk`."""
    s = q.astype(np.float32) @ np.asarray(xb, np.float32).T  # (n, N)
    order = np.lexsort((np.broadcast_to(ids, s.shape), -s), axis=1)[:, :k]
    w = order.shape[1]
    scores = np.full((len(q), k), -np.inf, np.float32)
    out = np.full((len(q), k), -1, np.int64)
    scores[:, :w] = np.take_along_axis(s, order, 1)
    out[:, :w] = ids[order]
    return scores, out


def _recall(got, truth):
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))


def _same_up_to_ties(s_a, i_a, s_b, i_b, tol=1e-5):
    """Rank lists agree except where two scores are equal to float precision."""
    np.testing.assert_allclose(s_a, s_b, atol=tol)
    diff = i_a != i_b
    if diff.any():
        near = np.abs(np.diff(s_a, axis=1)) < tol
        tie = np.zeros_like(diff)
        tie[:, 1:] |= near
        tie[:, :-1] |= near
        assert (~diff | tie).all()


@pytest.mark.parametrize("mode", ["single", "query"])
def test_flat_shards_equal_one_exact_index_and_numpy(data, mode, tmp_path):
    xb, q, ids = data
    template = train_template(xb[:1000], "flat", n=len(xb))
    shards = []
    for i, rows in enumerate(_parts(len(xb))):
        build_shard(template, xb[rows], ids[rows]).save(tmp_path / f"s{i}.cfidx")
        shards.append(tmp_path / f"s{i}.cfidx")
    merged = merge_shards(shards, tmp_path / "m.cfidx", mode=mode)
    assert isinstance(merged, ShardedIndex if mode == "query" else VectorIndex) and len(merged) == len(xb)
    s, i = merged.search(q, 10)
    assert i.dtype == np.int64 and s.dtype == np.float32 and i.shape == (len(q), 10)
    ts, ti = _brute_force(xb, q, 10, ids)  # numpy brute force: neither faiss nor merge_topk
    _same_up_to_ties(s, i, ts, ti)
    one = VectorIndex.build(xb, ids, "flat")
    _same_up_to_ties(s, i, *one.search(q, 10))
    back = open_index(tmp_path / "m.cfidx")  # the saved form searches the same
    np.testing.assert_array_equal(back.search(q, 10)[1], i)


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq", "ivf_pqfs"])
def test_ivf_shards_merge_to_the_index_one_process_builds(data, kind):
    """Same training => same lists and codes: the merged index answers exactly as the single one."""
    xb, q, ids = data
    template = train_template(xb[np.random.default_rng(4).choice(len(xb), 6000, replace=False)], kind,
                              n=len(xb), **_SMALL[kind])
    single = build_shard(template, xb, ids)
    shards = [build_shard(template, xb[r], ids[r]) for r in _parts(len(xb))]
    merged = merge_shards(shards)
    assert len(merged) == len(xb) and sorted(merged.ids().tolist()) == sorted(ids.tolist())
    assert all(len(s) for s in shards)  # the caller's shard objects are left intact
    s_m, i_m = merged.search(q, 10)
    s_1, i_1 = single.search(q, 10)
    # the same candidates in a different list order can swap exactly tied scores only
    _same_up_to_ties(s_m, i_m, s_1, i_1)
    truth = _brute_force(xb, q, 10, ids)[1]
    assert _recall(i_m, truth) == pytest.approx(_recall(i_1, truth))
    assert _recall(i_m, truth) > 0.5  # a working index, not an empty merge
    # removal still works on a merged index
    assert merged.remove(i_m[:, 0]) == len(set(i_m[:, 0].tolist()))
    assert not np.isin(merged.search(q, 10)[1], i_m[:, 0]).any()


def test_hnsw_shards_are_searched_together_with_matching_recall(data, tmp_path):
    xb, q, ids = data
    truth = _brute_force(xb, q, 10, ids)[1]
    template = train_template(xb[:100], "hnsw", n=len(xb), **_SMALL["hnsw"])
    parts = _parts(len(xb))
    for i, r in enumerate(parts):
        build_shard(template, xb[r], ids[r]).save(tmp_path / f"h{i}.cfidx")
    merged = merge_shards([tmp_path / f"h{i}.cfidx" for i in range(4)], tmp_path / "h.cfidx")  # auto: query
    assert isinstance(merged, ShardedIndex)
    single = VectorIndex.build(xb, ids, "hnsw", **_SMALL["hnsw"])
    r_sharded, r_single = _recall(merged.search(q, 10)[1], truth), _recall(single.search(q, 10)[1], truth)
    print(f"\nhnsw recall@10: 4 shards {r_sharded:.3f}, one graph {r_single:.3f}")
    # 2000 (query, neighbour) pairs: a standard error of ~0.005; 4 smaller graphs are searched at the
    # same efSearch each, so they must not lose recall beyond noise
    assert r_sharded >= r_single - 0.02
    with pytest.raises(UsageError, match="cannot be merged"):
        merge_shards([tmp_path / "h0.cfidx", tmp_path / "h1.cfidx"], mode="single")
    # the manifest names the shard files in place, relative to itself: the directory can move
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    os.rename(tmp_path, moved)
    back = open_index(moved / "h.cfidx")
    back.set_search_params(efSearch=48)
    np.testing.assert_array_equal(back.search(q, 10)[1], merged.search(q, 10)[1])


def _reference_topk(scores, ids, k):
    """merge_topk's rule by plain sorting, row by row: real ids (>= 0) by (-score, id), then -1 / -inf padding."""
    out_s = np.full((len(scores), k), -np.inf, np.float32)
    out_i = np.full((len(scores), k), -1, np.int64)
    for r, (srow, irow) in enumerate(zip(scores, ids)):
        best = sorted((-float(sc), int(i)) for sc, i in zip(srow, irow) if i >= 0 and np.isfinite(sc))[:k]
        out_s[r, :len(best)] = [-sc for sc, _ in best]
        out_i[r, :len(best)] = [i for _, i in best]
    return out_s, out_i


def test_merge_topk_breaks_ties_by_the_smaller_id_whatever_the_candidate_order():
    rng = np.random.default_rng(12)
    scores = rng.integers(0, 4, (50, 30)).astype(np.float32) / 4  # many exact ties
    ids = np.stack([rng.permutation(1000)[:30] for _ in range(50)]).astype(np.int64)
    got_s, got_i = merge_topk(scores, ids, 10)
    want_s, want_i = _reference_topk(scores, ids, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)
    shuffled = rng.permutation(30)  # the order shards answer in does not matter
    np.testing.assert_array_equal(merge_topk(scores[:, shuffled], ids[:, shuffled], 10)[1], want_i)
    assert got_s.dtype == np.float32 and got_i.dtype == np.int64


def test_merge_topk_pads_when_k_exceeds_the_candidates_and_ignores_padding_in_them():
    # two shards' answers for k=6: shard A holds 2 vectors, shard B 3 (the rest of each is -1 padding, whatever
    # score it carries), and one query where both shards are empty
    scores = np.array([[0.9, 0.1, 5.0, 5.0, 5.0, 5.0, 0.5, 0.9, 0.2, 7.0, 7.0, 7.0],
                       [-np.inf] * 12], np.float32)
    ids = np.array([[7, 3, -1, -1, -1, -1, 9, 4, 8, -1, -1, -1], [-1] * 12], np.int64)
    s, i = merge_topk(scores, ids, 6)
    assert i.tolist() == [[4, 7, 9, 8, 3, -1], [-1] * 6]  # 0.9 tie: id 4 before 7
    np.testing.assert_array_equal(s[0, :5], np.float32([0.9, 0.9, 0.5, 0.2, 0.1]))
    assert np.isneginf(s[0, 5]) and np.isneginf(s[1]).all()
    s, i = merge_topk(scores[:, :2], ids[:, :2], 5)  # fewer candidate columns than k
    assert i.tolist() == [[7, 3, -1, -1, -1], [-1] * 5] and s.shape == (2, 5)
    s, i = merge_topk(np.zeros((3, 0), np.float32), np.zeros((3, 0), np.int64), 4)  # no shard answered
    assert i.tolist() == [[-1] * 4] * 3 and np.isneginf(s).all()


def test_sharded_search_with_empty_and_small_shards_equals_brute_force(data):
    """k beyond every shard's size (and beyond the whole collection), with an empty shard among them."""
    xb, q, ids = data
    template = train_template(xb[:10], "flat", n=12)
    rows = [np.arange(0, 3), np.arange(3, 3), np.arange(3, 12)]  # 3 vectors, none, 9
    sharded = ShardedIndex([build_shard(template, xb[r], ids[r]) for r in rows])
    assert len(sharded) == 12
    for k in (5, 12, 20):
        s, i = sharded.search(q[:20], k)
        ts, ti = _brute_force(xb[:12], q[:20], k, ids[:12])
        _same_up_to_ties(s[:, :12], i[:, :12], ts[:, :12], ti[:, :12])
        assert (i[:, 12:] == -1).all() and np.isneginf(s[:, 12:]).all()


def test_sharded_index_contract_updates_and_save(data, tmp_path):
    xb, q, ids = data
    template = train_template(xb[:10], "flat", n=30)
    sh = ShardedIndex([build_shard(template, xb[:10], ids[:10]), build_shard(template, xb[10:25], ids[10:25])])
    s, i = sh.search(q[:3], 40)  # k larger than the collection: -1 / -inf padding after 25 hits
    assert (i[:, 25:] == -1).all() and np.isneginf(s[:, 25:]).all() and (i[:, :25] >= 0).all()
    # upsert across shards: the id of row 0 now carries row 30's vector, once
    sh.add(xb[30:31], ids[:1])
    assert len(sh) == 25 and sh.search(xb[30:31], 1)[1][0, 0] == ids[0]
    assert sh.remove(ids[1:3]) == 2 and len(sh) == 23
    sh.save(tmp_path / "x.cfidx")
    back = ShardedIndex.load(tmp_path / "x.cfidx")
    np.testing.assert_array_equal(back.search(q, 5)[1], sh.search(q, 5)[1])
    assert not list(tmp_path.glob(".*tmp"))


def test_on_disk_merge_equals_in_memory(data, tmp_path):
    xb, q, ids = data
    template = train_template(xb[:6000], "ivf_flat", n=len(xb), **_SMALL["ivf_flat"])
    shards = [build_shard(template, xb[r], ids[r]) for r in _parts(len(xb))]
    in_mem = merge_shards(shards)
    out = tmp_path / "idx" / "merged.cfidx"
    on_disk = merge_shards(shards, out, on_disk=True)
    assert len(list(out.parent.glob("*.ivfdata"))) == 1 and len(on_disk) == len(xb)
    np.testing.assert_array_equal(on_disk.search(q, 10)[1], in_mem.search(q, 10)[1])
    # loads from anywhere (faiss finds the lists beside the file), also after the directory moved
    moved = tmp_path / "elsewhere"
    os.rename(out.parent, moved)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        back = VectorIndex.load(moved / "merged.cfidx")
    finally:
        os.chdir(cwd)
    np.testing.assert_array_equal(back.search(q, 10)[1], in_mem.search(q, 10)[1])
    back.set_search_params(nprobe=16)
    back.save(moved / "merged.cfidx")  # re-saving keeps one faiss file and the lists
    assert len(list(moved.glob("*.faiss"))) == 1 and len(list(moved.glob("*.ivfdata"))) == 1
    assert VectorIndex.load(moved / "merged.cfidx").params["nprobe"] == 16


def test_merge_refuses_what_would_be_wrong(data, tmp_path):
    xb, q, ids = data
    a = train_template(xb[:3000], "ivf_flat", n=6000, **_SMALL["ivf_flat"])
    b = train_template(xb[3000:6000], "ivf_flat", n=6000, **_SMALL["ivf_flat"])
    with pytest.raises(UsageError, match="same trained template"):
        merge_shards([build_shard(a, xb[:10], ids[:10]), build_shard(b, xb[10:20], ids[10:20])])
    with pytest.raises(UsageError, match="more than one shard"):
        merge_shards([build_shard(a, xb[:10], ids[:10]), build_shard(a, xb[5:20], ids[5:20])])
    f = train_template(xb[:3000], "ivf_pqfs", n=6000, **_SMALL["ivf_pqfs"])
    with pytest.raises(UsageError, match="refine"):
        merge_shards([build_shard(f, xb[:100], ids[:100])], tmp_path / "x", on_disk=True)
    with pytest.raises(UsageError, match="empty"):
        build_shard(build_shard(a, xb[:10], ids[:10]), xb[10:20], ids[10:20])
    with pytest.raises(UsageError, match="mode"):
        merge_shards([build_shard(a, xb[:10], ids[:10])], mode="both")


def test_shards_built_by_separate_processes(data, tmp_path):
    """The point of a template file: workers that share nothing else build mergeable shards."""
    xb, q, ids = data
    train_template(xb[:6000], "ivf_pqfs", n=len(xb), **_SMALL["ivf_pqfs"]).save(tmp_path / "t.cfidx")
    parts = _parts(len(xb), 2)
    for i, r in enumerate(parts):
        np.save(tmp_path / f"x{i}.npy", xb[r])
        np.save(tmp_path / f"i{i}.npy", ids[r])
    code = ("import sys, numpy as np; from clipforge.retrieval.sharded import build_shard; d = sys.argv[1]; "
            "i = sys.argv[2]; build_shard(d + '/t.cfidx', np.load(f'{d}/x{i}.npy'), np.load(f'{d}/i{i}.npy'))"
            ".save(f'{d}/s{i}.cfidx')")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(i)]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    merged = merge_shards([tmp_path / "s0.cfidx", tmp_path / "s1.cfidx"])
    single = build_shard(tmp_path / "t.cfidx", xb, ids)
    _same_up_to_ties(*merged.search(q, 10), *single.search(q, 10))


def _store(root, xb, n_store_shards=6):
    from clipforge.retrieval.store import EmbeddingStore

    with EmbeddingStore.create(root, dim=xb.shape[1], model="tiny") as st:
        ids = [st.append([f"k{j}" for j in rows], img_emb=xb[rows])
               for rows in np.array_split(np.arange(len(xb)), n_store_shards)]
    return np.concatenate(ids)


def test_cli_shard_train_build_merge_search(data, tmp_path, capsys):
    from clipforge.cli import main

    xb, q, _ = data
    xb = xb[:6000]
    ids = _store(tmp_path / "store", xb)
    t = tmp_path / "trained.cfidx"
    assert main(["index", "shard-train", str(tmp_path / "store"), "--out", str(t), "--index-kind", "ivf_flat",
                 "--param", "nlist=32", "--sample", "3000"]) == 0
    for i in range(3):
        assert main(["index", "shard-build", str(tmp_path / "store"), "--trained", str(t), "--part", f"{i}/3",
                     "--out", str(tmp_path / f"s{i}.cfidx")]) == 0
    shards = [str(tmp_path / f"s{i}.cfidx") for i in range(3)]
    assert main(["index", "merge", *shards, "--out", str(tmp_path / "m" / "x.cfidx"), "--on-disk",
                 "--param", "nprobe=32"]) == 0  # nprobe = nlist: exhaustive, so exact
    out = capsys.readouterr().out
    assert "6000 vectors" in out and "on disk" in out
    merged = open_index(tmp_path / "m" / "x.cfidx")
    assert merged.params["nprobe"] == 32 and sorted(merged.ids().tolist()) == sorted(ids.tolist())
    xs = np.stack([x / np.linalg.norm(x) for x in xb.astype(np.float16).astype(np.float32)])  # stored as fp16
    _same_up_to_ties(*merged.search(q, 10), *_brute_force(xs, q, 10, ids), tol=1e-4)
    # bad input: one line, exit 2
    assert main(["index", "shard-build", str(tmp_path / "store"), "--trained", str(t), "--part", "3/3",
                 "--out", str(tmp_path / "bad.cfidx")]) == 2
    assert "part" in capsys.readouterr().err
    assert main(["index", "merge", shards[0], shards[0], "--out", str(tmp_path / "dup.cfidx")]) == 2


@pytest.mark.slow
def test_200k_x_512_in_four_shards():
    """Acceptance: 200k vectors built in 4 shards merge to the single index's results — exact (flat, also
    against numpy brute force) and approximate (ivf_pqfs from one training: the same answers, so the same
    recall)."""
    xb, q = synthetic_embeddings(200_000, 512, seed=7, n_queries=100)
    ids = np.random.default_rng(8).choice(10**9, len(xb), replace=False).astype(np.int64)
    parts = _parts(len(xb), 4, seed=9)
    ts, ti = _brute_force(xb, q, 10, ids)
    flat_t = train_template(xb[:10], "flat", n=len(xb))
    merged = merge_shards([build_shard(flat_t, xb[r], ids[r]) for r in parts])
    _same_up_to_ties(*merged.search(q, 10), ts, ti)
    _same_up_to_ties(*merged.search(q, 10), *VectorIndex.build(xb, ids, "flat").search(q, 10))
    del merged
    t = train_template(xb[np.random.default_rng(10).choice(len(xb), 30_000, replace=False)], "ivf_pqfs",
                       n=len(xb), nlist=512, nprobe=64, k_factor=40)
    merged = merge_shards([build_shard(t, xb[r], ids[r]) for r in parts])
    single = build_shard(t, xb, ids)
    s_m, i_m = merged.search(q, 10)
    _same_up_to_ties(s_m, i_m, *single.search(q, 10))
    r = _recall(i_m, ti)
    print(f"\n200k x 512 ivf_pqfs nlist 512 nprobe 64 k_factor 40, 4 shards merged: recall@10 {r:.3f}")
    assert r >= 0.9


def test_cli_merge_into_an_index_directory(data, tmp_path):
    """--out INDEX_DIR: the merged index becomes its index.faiss and index.json describes it."""
    import json

    from clipforge.cli import main

    xb, _, _ = data
    store = tmp_path / "idx"
    ids = _store(store, xb[:3000], n_store_shards=4)
    (store / "index.json").write_text(json.dumps({"model": "tiny", "index": {"kind": "flat"}}))
    t = tmp_path / "t.cfidx"
    assert main(["index", "shard-train", str(store), "--out", str(t), "--index-kind", "hnsw",
                 "--param", "M=8", "--param", "efConstruction=20"]) == 0
    for i in range(2):
        assert main(["index", "shard-build", str(store), "--trained", str(t), "--part", f"{i}/2",
                     "--out", str(tmp_path / f"h{i}.cfidx")]) == 0
    assert main(["index", "merge", str(tmp_path / "h0.cfidx"), str(tmp_path / "h1.cfidx"), "--out", str(store),
                 "--param", "efSearch=64"]) == 0
    info = json.loads((store / "index.json").read_text())
    assert info["index"]["kind"] == "hnsw" and info["index"]["n"] == 3000 and info["model"] == "tiny"
    served = open_index(store / "index.faiss")  # what IndexSearcher opens
    assert isinstance(served, ShardedIndex) and served.params["efSearch"] == 64
    assert sorted(served.ids().tolist()) == sorted(ids.tolist())
