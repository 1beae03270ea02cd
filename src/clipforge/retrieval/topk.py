"""Merging candidate lists into one top k: descending score, equal scores by the smaller id, -1 padding last.

The one tie rule of every merge (a sharded index's per-shard results, brute force's per-block results), so a
merged exact search returns what one exact index would.
"""

from __future__ import annotations

import numpy as np

__all__ = ["merge_topk"]


def merge_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k of each row of candidate (scores, ids) (n, m): descending score, ties by ascending id, -1 last."""
    n, m = scores.shape
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    big = np.where(ids < 0, np.iinfo(np.int64).max, ids)  # padding sorts after every real id
    order = np.lexsort((big, -scores), axis=1)[:, :k]  # primary key last: -score, then id
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    out_i = np.full((n, k), -1, dtype=np.int64)
    w = min(k, m)
    out_s[:, :w] = np.take_along_axis(scores, order, 1)
    out_i[:, :w] = np.take_along_axis(ids, order, 1)
    out_i[np.isneginf(out_s)] = -1
    return out_s, out_i
