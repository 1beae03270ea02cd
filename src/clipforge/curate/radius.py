"""The near-duplicate radius, calibrated on the collection itself (`eps="auto"`).

A fixed cosine radius means different things for different features: a weak model maps a whole class close to
one point (every distinct digit image within 0.05 of another), a strong one spreads distinct images far apart.
So the default radius is measured on the data: the typical distance from an image to its `k`-th nearest other
image (the median, over up to `sample` images queried against all), times `factor`:

    eps = factor * median_i (1 - cos(x_i, its k-th nearest neighbour))

The k-th neighbour (k = 10) is far enough that a planted group of a few copies does not shorten it, so the
scale is that of distinct images; a copy (resized, re-encoded) lies far inside it. `factor` = 0.1 was chosen
on planted copies (docs/curation.md, bench/bench_curation.py): on the digits demo's 16x16 pixel descriptor the
median 10th-neighbour distance is 0.20, distinct images' nearest neighbours begin at 0.027 and every resized
or re-encoded copy lies within 0.018, so eps = 0.020 finds all copies and removes no distinct image.
"""
from __future__ import annotations

import faiss
import numpy as np

from clipforge.errors import UsageError

__all__ = ["auto_eps", "neighbour_scale", "AUTO_FACTOR", "AUTO_K", "AUTO_SAMPLE"]

AUTO_FACTOR = 0.1
AUTO_K = 10
AUTO_SAMPLE = 4096
_MAX_EPS = 0.5  # a radius beyond this is no near-duplicate test at all


def neighbour_scale(x: np.ndarray, k: int = AUTO_K, sample: int = AUTO_SAMPLE, seed: int = 0) -> float:
    """Median cosine distance from a row of `x` (L2-normalised) to its `k`-th nearest other row, over up to
    `sample` rows (seeded) searched exactly against all of them."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    n = len(x)
    if n < 2:
        return 0.0
    if k < 1 or sample < 1:
        raise UsageError(f"`k` and `sample` must be >= 1, got {k} and {sample}")
    k = min(k, n - 1)
    rows = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, found = index.search(x[rows], k + 1)
    # the row itself is among the k + 1 found (first, unless an exact copy ties with it): drop one self match
    dist = []
    for r, s, f in zip(rows, sims, found):
        others = s[f != r][:k] if (f == r).any() else s[:k]
        dist.append(1.0 - float(others[k - 1]))
    return float(np.median(np.clip(dist, 0.0, 2.0)))


def auto_eps(x: np.ndarray, factor: float = AUTO_FACTOR, k: int = AUTO_K, sample: int = AUTO_SAMPLE,
             seed: int = 0) -> dict:
    """{"eps", "scale", "k", "factor", "sampled"}: the radius `factor * neighbour_scale(x, k)`, capped at 0.5."""
    if not 0.0 < factor <= 1.0:
        raise UsageError(f"`factor` must be in (0, 1], got {factor}")
    scale = neighbour_scale(x, k, sample, seed)
    return {"eps": round(min(factor * scale, _MAX_EPS), 6), "scale": round(scale, 6), "k": min(k, max(len(x) - 1, 0)),
            "factor": factor, "sampled": min(len(x), sample)}
