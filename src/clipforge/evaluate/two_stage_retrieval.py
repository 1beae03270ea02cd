"""Two-stage text->image retrieval (INQUIRE's Fullrank then Rerank): what a second model buys over the first.

    evaluate_two_stage_retrieval(fast_encoder, strong_encoder, "jsonl:pairs.jsonl", rerank_k=100, cutoff=10)

Every caption is a query whose one relevant key is its own image. Stage 1 (the index's model) ranks the
whole collection; the second stage re-scores stage 1's top `rerank_k` with the second model and puts them
first in its order, the rest keep stage 1's order — what a search with a reranker returns. Three
rankings are scored with the same metric functions (`clipforge.metrics.retrieval`):

  t2i_...          stage 1 alone (the first model over the whole collection)
  stage2_t2i_...   the second model alone over the whole collection (what reranking approaches as
                   rerank_k grows, at the cost of embedding every image with the second model)
  rerank_t2i_...   the two-stage ranking

each with recall@K, mean and median rank, MRR, and with a `cutoff` k, AP@k and nDCG@k (one relevant image
per query, so AP@k is the reciprocal rank within the top k). `candidates_R@{rerank_k}` is stage 1's recall
at rerank_k: the ceiling of any reranker. Ties: lower image index first, in every stage.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from clipforge.data.sources import open_source
from clipforge.encode import as_encoder
from clipforge.errors import UsageError
from clipforge.metrics.retrieval import positive_ranks, ranked_list_metrics, topk_blocked

__all__ = ["evaluate_two_stage_retrieval", "two_stage_ranks"]


def two_stage_ranks(text1, image1, text2, image2, text_to_image, rerank_k: int) -> dict[str, np.ndarray]:
    """1-based rank of each query's image (text_to_image (M,)) under stage 1 (text1 (M, D1) vs image1
    (N, D1)), stage 2 alone (text2 (M, D2) vs image2 (N, D2)) and the two-stage ranking; plus `candidate`
    (M,) bool: whether stage 1 put the image in its top rerank_k."""
    t2i = np.asarray(text_to_image, dtype=np.int64)
    r1 = positive_ranks(text1, image1, t2i)  # (M,)
    r2 = positive_ranks(text2, image2, t2i)
    k = min(int(rerank_k), len(image1))
    _, cand = topk_blocked(text1, image1, k)  # (M, k) stage 1's candidates, best first
    cand = np.asarray(cand, dtype=np.int64)
    t2 = torch.as_tensor(np.asarray(text2, dtype=np.float32))
    i2 = torch.as_tensor(np.asarray(image2, dtype=np.float32))
    rr = r1.copy()  # a query whose image is not a candidate keeps its stage 1 rank (> rerank_k)
    is_cand = (cand == t2i[:, None]).any(1)
    for q in np.flatnonzero(is_cand):
        s = (i2[cand[q]] @ t2[q]).numpy()  # (k,) second-stage scores of the candidates
        pos = int(np.flatnonzero(cand[q] == t2i[q])[0])
        # rank among candidates by (score desc, stage 1 order) — the order rerank_hits gives
        rr[q] = 1 + int((s > s[pos]).sum()) + int((s[:pos] == s[pos]).sum())
    return {"stage1": r1, "stage2": r2, "rerank": rr, "candidate": is_cand}


def _summary(ranks: np.ndarray, ks: Sequence[int], cutoff: Optional[int], prefix: str) -> dict:
    out = {f"{prefix}R@{k}": float((ranks <= k).mean()) for k in ks}
    out[f"{prefix}mean_rank"] = float(ranks.mean())
    out[f"{prefix}median_rank"] = float(np.median(ranks))
    out[f"{prefix}MRR"] = float((1.0 / ranks).mean())
    if cutoff is not None:
        rows = [np.arange(1, cutoff + 1) == r for r in ranks]  # the query's relevance down its top `cutoff`
        m = ranked_list_metrics(rows, np.ones(len(ranks), dtype=np.int64), cutoff)
        out[f"{prefix}AP@{cutoff}"], out[f"{prefix}nDCG@{cutoff}"] = m[f"AP@{cutoff}"], m[f"nDCG@{cutoff}"]
    return out


def evaluate_two_stage_retrieval(model, rerank_model, source, *, rerank_k: int = 100,
                                 ks: Sequence[int] = (1, 5, 10), cutoff: Optional[int] = None,
                                 batch_size: int = 256, workers: int = 0, progress: Optional[bool] = None) -> dict:
    """-> {"metrics": {t2i_*, stage2_t2i_*, rerank_t2i_*, candidates_R@k, t2i_n}, "num_images", "num_texts",
    "rerank_k", "skipped"}. `model` and `rerank_model`: models or `Encoder`s (stage 1, stage 2)."""
    if int(rerank_k) < 1:
        raise UsageError(f"`rerank_k` must be >= 1, got {rerank_k}")
    if cutoff is not None and int(cutoff) < 1:
        raise UsageError(f"`cutoff` must be >= 1, got {cutoff}")
    enc1, enc2 = as_encoder(model), as_encoder(rerank_model)
    if isinstance(source, str):
        source = open_source(source)
    f1 = enc1.encode_source(source, batch_size, workers=workers, progress=progress, desc="stage 1 images")
    f2 = enc2.encode_source(source, batch_size, workers=workers, progress=progress, desc="stage 2 images")
    if len(f1.ids) == 0:
        raise UsageError(f"{source.spec}: no readable images")
    if list(f1.ids) != list(f2.ids):  # both read the same files with the same decoder
        raise UsageError(f"{source.spec}: the two models read different images (a file changed meanwhile?)")
    texts = [c for caps in f1.captions for c in caps]
    if not texts:
        raise UsageError(f"{source.spec}: the images have no captions; retrieval needs image-text pairs")
    t2i = np.repeat(np.arange(len(f1.captions)), [len(c) for c in f1.captions])  # (M,)
    t1 = enc1.encode_texts(texts, batch_size, progress=progress)
    t2 = enc2.encode_texts(texts, batch_size, progress=progress)
    ranks = two_stage_ranks(t1, f1.feats, t2, f2.feats, t2i, rerank_k)
    k = min(int(rerank_k), len(f1.ids))
    cutoff = None if cutoff is None else int(cutoff)
    metrics = _summary(ranks["stage1"], ks, cutoff, "t2i_")
    metrics.update(_summary(ranks["stage2"], ks, cutoff, "stage2_t2i_"))
    metrics.update(_summary(ranks["rerank"], ks, cutoff, "rerank_t2i_"))
    metrics[f"candidates_R@{k}"] = float(ranks["candidate"].mean())
    metrics["t2i_n"] = int(len(texts))
    return {"metrics": metrics, "num_images": len(f1.ids), "num_texts": len(texts), "rerank_k": k,
            "skipped": f1.skipped.as_dict()}
