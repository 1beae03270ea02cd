"""Retrieval metrics computed block by block: image<->text recall@K, ranks, and the INQUIRE set.

Similarities are inner products `queries @ keys.T` (pass L2-normalised embeddings for cosine). They are
computed for a block of query rows at a time, sized so a block holds at most `max_block_elems` scores
(default 2**23 scores = 32 MB in float32), so the full (Q, M) matrix is never held for big sets. Within a block
each query row is complete, so a positive's score and all its competitors' scores come from the same
matrix product (no round-off mismatch between a separately computed positive score and the block).
Precision: scores are computed in float32 by default (speed). float32 matrix products can round
differently for different block shapes (we measured 1-ulp differences between row-block sizes), so a pair
of keys within 1 ulp of each other could swap order when the block size changes; ranks within one run are
always self-consistent. Pass `dtype=torch.float64` for rankings that do not depend on the block size (the
products of float32 inputs are exact in float64), at roughly twice the matmul cost.

Tie rule: among keys with exactly equal scores, the key with the LOWER index ranks first. Ranks are
1-based: rank = 1 + #(keys scoring higher) + #(keys scoring equal with a lower index). Top-k lists follow
the same order. NaN scores rank last. CLIP_benchmark's recall@K takes `torch.topk`, whose order among exact
ties is unspecified: the two agree exactly on tie-free scores (checked against its outputs in
tests/test_golden_fidelity.py) and may differ where keys tie (duplicated images).

INQUIRE definitions (see shared TECHNIQUES.md):
- AP@k = (AP over the top k) * (#hits in top k) / min(#positives, k)
       = sum over relevant ranks i <= k of precision@i, divided by min(#positives, k).
- nDCG@k: binary gains, discount 1/log2(rank + 1); positives that were not retrieved are appended at the
  bottom of the list (they matter only when the list is shorter than k), and the ideal DCG uses all
  positives.
- MRR: mean over queries of 1 / rank of the first relevant item in the list (0 when none is in it).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from clipforge.errors import UsageError
from clipforge.evaluate.metrics import stable_argsort_desc, to_numpy

__all__ = [
    "similarity_blocks",
    "topk_blocked",
    "positive_ranks",
    "image_text_recall",
    "ap_at_k",
    "ndcg_at_k",
    "reciprocal_rank",
    "ranked_list_metrics",
    "fullrank_metrics",
    "rerank_metrics",
]

DEFAULT_MAX_BLOCK_ELEMS = 1 << 23


def _as_tensor(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(to_numpy(x)))
    t = t.detach().cpu()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    if t.ndim != 2:
        raise UsageError(f"embeddings must be 2-D (N, D), got shape {tuple(t.shape)}")
    return t


def similarity_blocks(
    queries, keys, block_size: int | None = None, max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(start, S)` with `S = queries[start:start+b] @ keys.T`, shape (b, M); NaN replaced by -inf.

    `block_size` (query rows per block) defaults to what fits in `max_block_elems` scores.
    """
    q, k = _as_tensor(queries), _as_tensor(keys)
    if q.shape[1] != k.shape[1]:
        raise UsageError(f"queries and keys differ in dimension: {q.shape[1]} vs {k.shape[1]}")
    q, k = q.to(dtype), k.to(dtype)
    m = max(1, k.shape[0])
    b = block_size or max(1, max_block_elems // m)
    kt = k.T.contiguous()
    finite = bool(torch.isfinite(q).all() and torch.isfinite(k).all())  # then no NaN can appear
    for start in range(0, q.shape[0], b):
        s = q[start : start + b] @ kt  # (b, M)
        yield start, s if finite else torch.nan_to_num(s, nan=float("-inf"))


def _topk_rows(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of `s (b, M)`, ordered by (score desc, index asc). Exact under ties."""
    vals, idx = torch.topk(s, k, dim=1)  # (b, k): right set unless ties straddle the k-th value
    # reorder candidates: by index ascending first, then a stable sort by score descending
    by_idx = torch.sort(idx, dim=1).indices
    idx, vals = idx.gather(1, by_idx), vals.gather(1, by_idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    # rows where more than k scores reach the k-th value: topk may have picked arbitrary tied indices
    ambiguous = ((s >= vals[:, -1:]).sum(1) > k).nonzero().flatten()
    if ambiguous.numel():
        full_v, full_i = torch.sort(s[ambiguous], dim=1, descending=True, stable=True)
        vals[ambiguous], idx[ambiguous] = full_v[:, :k], full_i[:, :k]
    return vals, idx


def topk_blocked(
    queries, keys, k: int, block_size: int | None = None, max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k keys per query: `scores (Q, k) float32, ids (Q, k) int64` (key row positions).

    Ties: lower key index first. When k exceeds the number of keys, the tail is padded with id -1 and
    score -inf (the faiss convention).
    """
    q, kk = _as_tensor(queries), _as_tensor(keys)
    n_keys = kk.shape[0]
    if k < 1:
        raise UsageError(f"k must be >= 1, got {k}")
    kr = min(k, n_keys)
    out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    if kr == 0:
        return out_s, out_i
    for start, s in similarity_blocks(q, kk, block_size, max_block_elems, dtype):
        vals, idx = _topk_rows(s, kr)
        out_s[start : start + len(s), :kr] = vals.float().numpy()
        out_i[start : start + len(s), :kr] = idx.numpy()
    return out_s, out_i


def _pad_positives(positives, n_queries: int) -> torch.Tensor:
    """list of id arrays (or a (Q,) / (Q, P) int array) -> (Q, P) long, sorted ascending, -1 padded."""
    if isinstance(positives, (np.ndarray, torch.Tensor)):
        arr = to_numpy(positives).astype(np.int64)
        arr = arr[:, None] if arr.ndim == 1 else arr
        rows = [r[r >= 0] for r in arr]
    else:
        rows = [np.asarray(r, dtype=np.int64).ravel() for r in positives]
    if len(rows) != n_queries:
        raise UsageError(f"need one positive set per query: {n_queries} queries, {len(rows)} sets")
    width = max([len(r) for r in rows] + [1])
    out = np.full((n_queries, width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        r = np.unique(r)  # sorted, so argmax's first maximum is the lowest tied index
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def positive_ranks(
    queries, keys, positives, block_size: int | None = None, max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """1-based rank of the FIRST-ranked positive key for each query (0 where a query has no positive).

    `positives`: per query, the key ids that count as hits (list of arrays, or a (Q,) int array for one
    positive each). The first-ranked positive is the one with the highest score (ties: lowest index); its
    rank is found by counting, with no sort.
    """
    q, kk = _as_tensor(queries), _as_tensor(keys)
    pos = _pad_positives(positives, q.shape[0])  # (Q, P)
    if pos.numel() and int(pos.max()) >= kk.shape[0]:
        raise UsageError(f"positive id {int(pos.max())} out of range for {kk.shape[0]} keys")
    ranks = np.zeros(q.shape[0], dtype=np.int64)
    for start, s in similarity_blocks(q, kk, block_size, max_block_elems, dtype):
        p = pos[start : start + len(s)]  # (b, P)
        valid = p >= 0
        ps = s.gather(1, p.clamp(min=0)).masked_fill(~valid, float("-inf"))  # (b, P)
        best = ps.argmax(1, keepdim=True)  # first maximum -> lowest id among tied positives
        bval, bid = ps.gather(1, best), p.gather(1, best)  # (b, 1)
        r = 1 + (s > bval).sum(1)  # (b,)
        rows, cols = (s == bval).nonzero(as_tuple=True)  # sparse: usually just the positive itself
        before = cols < bid[rows, 0]
        r.index_add_(0, rows[before], torch.ones(int(before.sum()), dtype=r.dtype))
        ranks[start : start + len(s)] = np.where(valid.any(1).numpy(), r.numpy(), 0)
    return ranks


def _recall_summary(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    ranks = ranks[ranks > 0]
    out = {f"{prefix}_R@{k}": float((ranks <= k).mean()) for k in ks}
    out[f"{prefix}_mean_rank"] = float(ranks.mean())
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    out[f"{prefix}_n"] = int(len(ranks))
    return out


def image_text_recall(
    image_emb,
    text_emb,
    text_to_image,
    ks: Sequence[int] = (1, 5, 10),
    block_size: int | None = None,
    max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Flickr30K / COCO style recall@K with several captions per image.

    image_emb (N, D), text_emb (M, D), text_to_image (M,): the image index each caption belongs to.
    image->text ("i2t"): a hit at K if ANY of the image's captions is in its top K texts.
    text->image ("t2i"): a hit at K if the caption's image is in its top K images.
    Also mean and median rank (of the first relevant item). Images without a caption are left out of the
    i2t numbers (`i2t_n` says how many were scored). Ties: lower index first.
    """
    t2i = to_numpy(text_to_image).astype(np.int64).ravel()
    n_img = _as_tensor(image_emb).shape[0]
    if t2i.shape[0] != _as_tensor(text_emb).shape[0]:
        raise UsageError(f"text_to_image has {t2i.shape[0]} entries for {_as_tensor(text_emb).shape[0]} texts")
    if t2i.size and (t2i.min() < 0 or t2i.max() >= n_img):
        raise UsageError(f"text_to_image must index images in [0, {n_img})")
    captions = [[] for _ in range(n_img)]
    for j, i in enumerate(t2i):
        captions[i].append(j)
    opts = dict(block_size=block_size, max_block_elems=max_block_elems, dtype=dtype)
    out = _recall_summary(positive_ranks(image_emb, text_emb, captions, **opts), ks, "i2t")
    out.update(_recall_summary(positive_ranks(text_emb, image_emb, t2i, **opts), ks, "t2i"))
    return out


# ---- ranked-list metrics (INQUIRE) --------------------------------------------------------------------


def ap_at_k(ranked_relevant, n_positives: int, k: int) -> float:
    """INQUIRE AP@k for one ranked list of 0/1 relevance: sum_{relevant i<=k} precision@i / min(n_pos, k)."""
    rel = np.asarray(ranked_relevant, dtype=bool)[:k]
    if n_positives <= 0 or not rel.any():
        return 0.0
    prec = np.cumsum(rel)[rel] / (np.flatnonzero(rel) + 1)
    return float(prec.sum() / min(n_positives, k))


def ndcg_at_k(ranked_relevant, n_positives: int, k: int) -> float:
    """nDCG@k, binary gains; unretrieved positives appended at the bottom before cutting at k."""
    rel = np.asarray(ranked_relevant, dtype=np.float64).ravel()
    if n_positives <= 0:
        return 0.0
    missing = max(0, int(n_positives) - int(rel.sum()))
    rel = np.concatenate([rel, np.ones(missing)])[:k]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((rel * discount[: len(rel)]).sum())
    idcg = float(discount[: min(int(n_positives), k)].sum())
    return dcg / idcg


def reciprocal_rank(ranked_relevant, k: int | None = None) -> float:
    """1 / (1-based rank of the first relevant item), 0 when none is in the (top-k of the) list."""
    rel = np.asarray(ranked_relevant, dtype=bool)[:k]
    hit = np.flatnonzero(rel)
    return float(1.0 / (hit[0] + 1)) if hit.size else 0.0


def ranked_list_metrics(ranked_relevant_rows, n_positives, k: int) -> dict[str, float]:
    """Mean AP@k, nDCG@k and MRR (within the top k) over queries, with per-query arrays."""
    aps, ndcgs, rrs = [], [], []
    for rel, npos in zip(ranked_relevant_rows, n_positives):
        aps.append(ap_at_k(rel, int(npos), k))
        ndcgs.append(ndcg_at_k(rel, int(npos), k))
        rrs.append(reciprocal_rank(rel, k))
    return {
        f"AP@{k}": float(np.mean(aps)),
        f"nDCG@{k}": float(np.mean(ndcgs)),
        "MRR": float(np.mean(rrs)),
        "n_queries": len(aps),
        "per_query": {"ap": np.array(aps), "ndcg": np.array(ndcgs), "rr": np.array(rrs)},
    }


def fullrank_metrics(
    queries, keys, relevant, k: int = 50, block_size: int | None = None,
    max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS, dtype: torch.dtype = torch.float32,
) -> dict:
    """INQUIRE Fullrank: rank the whole collection for each query, score the top k (default 50).

    relevant: per query, the key ids that are relevant. Returns mean AP@k, nDCG@k, MRR (+ per_query).
    """
    _, ids = topk_blocked(queries, keys, k, block_size, max_block_elems, dtype)  # (Q, k)
    if len(relevant) != ids.shape[0]:
        raise UsageError(f"need one relevant set per query: {ids.shape[0]} queries, {len(relevant)} sets")
    rows, npos = [], []
    for q_ids, rel in zip(ids, relevant):
        rel = np.unique(np.asarray(rel, dtype=np.int64))
        rows.append(np.isin(q_ids[q_ids >= 0], rel))
        npos.append(len(rel))
    return ranked_list_metrics(rows, npos, k)


def rerank_metrics(candidate_scores, candidate_relevant, n_positives=None, k: int = 50) -> dict:
    """INQUIRE Rerank: each query has a fixed candidate list (e.g. 100) with scores and relevance.

    candidate_scores (Q, R) (NaN = padding, ranked last), candidate_relevant (Q, R) 0/1. n_positives (Q,):
    the query's total positives in the collection (default: those among its candidates); positives missing
    from the candidates lower AP@k and nDCG@k. Ties: lower candidate column first.
    """
    scores, rel = to_numpy(candidate_scores), to_numpy(candidate_relevant).astype(bool)
    if scores.shape != rel.shape or scores.ndim != 2:
        raise UsageError(f"scores and relevance must both be (Q, R), got {scores.shape} and {rel.shape}")
    npos = rel.sum(1) if n_positives is None else to_numpy(n_positives).astype(np.int64)
    if np.any(npos < rel.sum(1)):
        raise UsageError("n_positives is smaller than the number of relevant candidates for some query")
    order = stable_argsort_desc(scores, axis=1)
    ranked = np.take_along_axis(rel, order, axis=1)
    return ranked_list_metrics(list(ranked), npos, k)
