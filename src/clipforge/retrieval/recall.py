"""Recall of an approximate index against exact search: brute-force ground truth (`exact_knn`, numpy, never
faiss), `measure_recall` (recall@k and latency, recorded in the index's info) and `tune_recall` (the cheapest
search parameter reaching a target recall)."""

from __future__ import annotations

import time

import faiss
import numpy as np

from clipforge.retrieval.index import VectorIndex, check_vectors
from clipforge.retrieval.kinds import index_kind
from clipforge.retrieval.topk import merge_topk

__all__ = ["exact_knn", "measure_recall", "tune_recall"]


def exact_knn(xb: np.ndarray, q: np.ndarray, k: int, ids: np.ndarray | None = None, block: int = 65536):
    """Brute-force ground truth with numpy (BLAS), independent of faiss: (scores (n, k), ids (n, k)).

    xb (N, D) may be a memory map: it is read in blocks of `block` rows, so N can exceed RAM. Equal scores
    rank by the smaller id (the rule the sharded searcher merges by); -1 / -inf pad rows when N < k.
    """
    q = check_vectors(q, None, "exact_knn")
    n_total = len(xb)
    ids = np.arange(n_total, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), 0), -1, dtype=np.int64)
    for start in range(0, n_total, block):
        xs = np.ascontiguousarray(xb[start:start + block], dtype=np.float32)
        s = q @ xs.T  # (n, b)
        i = np.broadcast_to(ids[start:start + len(xs)], s.shape)
        if s.shape[1] > k:  # keep this block's top k before merging
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]  # (n, k), arbitrary among ties at the k-th
            kth = np.take_along_axis(s, part, 1).min(1, keepdims=True)
            for r in np.flatnonzero((s >= kth).sum(1) > k):  # rare (duplicate vectors): smaller ids win
                part[r] = np.lexsort((i[r], -s[r]))[:k]
            s, i = np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)
        best_s, best_i = merge_topk(np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1), k)
    return best_s, best_i


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |got ∩ truth| / |truth| (ids, -1 padding ignored)."""
    return float(np.mean([len(set(g[g >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum()))
                          for g, t in zip(got, truth)]))


def measure_recall(index: VectorIndex, xb: np.ndarray, queries: np.ndarray, k: int = 10,
                   ids: np.ndarray | None = None, record: bool = True, truth: np.ndarray | None = None) -> dict:
    """recall@k of `index` against exact search over xb (rows carrying `ids`), on sample queries.

    recall@k = mean over queries of |approx top-k ∩ exact top-k| / k. Also reports p50 latency of
    one-query searches (as a user's arrive) and the batched cost per query. Recorded into index.info
    when record=True. truth: precomputed exact top-k ids (n_queries, k), to skip the brute-force pass.
    """
    queries = check_vectors(queries, index.d, "measure_recall")
    if truth is None:
        _, truth = exact_knn(xb, queries, k, ids)
    t0 = time.perf_counter()
    _, got = index.search(queries, k)
    batch_s = time.perf_counter() - t0
    lat = []
    for qi in queries[: min(len(queries), 100)]:
        t = time.perf_counter()
        index.search(qi[None], k)
        lat.append(time.perf_counter() - t)
    result = {f"recall@{k}": _recall(got, truth), "k": k, "n_queries": len(queries), "n": len(xb),
              "p50_ms": float(np.median(lat) * 1e3), "batch_ms_per_query": batch_s * 1e3 / len(queries),
              "kind": index.kind, "params": dict(index.params), "threads": faiss.omp_get_max_threads()}
    if record:
        index.info[f"recall@{k}"] = result
    return result


def tune_recall(index: VectorIndex, xb: np.ndarray, queries: np.ndarray, target: float = 0.95, k: int = 10,
                ids: np.ndarray | None = None) -> dict:
    """Smallest value of the kind's `tune_param` (efSearch, nprobe) whose measured recall@k reaches target (exhaustive if none does).

    Doubles the parameter until the target is met, then bisects between the last miss and the first hit:
    recall jumps steeply in these parameters, so doubling alone can overshoot the cost by ~2x.
    Returns (and records) measure_recall's figures at the chosen value.
    """
    queries = check_vectors(queries, index.d, "tune_recall")
    _, truth = exact_knn(xb, queries, k, ids)
    kind = index_kind(index.kind)
    name = kind.tune_param
    if name is None:  # exact: nothing to tune
        return measure_recall(index, xb, queries, k, ids, truth=truth)
    limit = kind.tune_limit(len(xb), index.params)

    def ok(v: int) -> bool:
        index.set_search_params(**{name: v})
        return _recall(index.search(queries, k)[1], truth) >= target

    lo, hi = 0, int(index.params[name])
    while not ok(hi) and hi < limit:
        lo, hi = hi, min(limit, 2 * hi)
    while hi - lo > max(1, hi // 16):  # bisect to within ~6% of the cheapest passing value
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    index.set_search_params(**{name: hi})
    return measure_recall(index, xb, queries, k, ids, truth=truth)
