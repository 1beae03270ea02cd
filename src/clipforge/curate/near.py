"""Near-duplicates among L2-normalised embeddings: candidate pairs, then one documented keep rule.

Two ways to find the pairs with cosine >= 1 - eps:
  range     faiss exact range search (inner product) over all n vectors: every pair, O(n^2 d) work, for
            moderate n (the default up to `RANGE_MAX` vectors).
  semdedup  SemDeDup (Abbas et al. 2023): spherical k-means into `n_clusters` clusters (default ~sqrt(n)), then
            exact pairwise cosines inside each cluster only: O(n^2 d / k), for large n. Pairs split across
            clusters are not seen (the method's known trade-off).

Keep rule (both ways): within each group of near-duplicates (a connected component of the pair graph at this
eps), items are visited by priority, highest first, and an item is removed when it is within eps of an item
already kept; it records that item (`duplicate_of`, the most similar kept one). The default priority,
"central", is the cosine to the group's mean embedding, so the member nearest the group's centre is kept (as
SemDeDup keeps the one nearest its cluster centre); ties break by position (earlier first). Callers may pass
another priority (source order, a caption score).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from clipforge.errors import UsageError

__all__ = ["Pairs", "candidate_pairs", "range_pairs", "semdedup_pairs", "keep_greedy", "RANGE_MAX", "METHODS"]

RANGE_MAX = 50_000
METHODS = ("auto", "range", "semdedup")
_QUERY_BLOCK = 4096


@dataclass
class Pairs:
    """Candidate pairs i < j with their cosine: arrays (P,) int64, int64, float32."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray
    method: str

    def at(self, eps: float) -> "Pairs":
        keep = self.sim >= 1.0 - eps - 1e-6
        return Pairs(self.i[keep], self.j[keep], self.sim[keep], self.method)


def _as_float32(x) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise UsageError(f"embeddings must be (n, d), got shape {x.shape}")
    return x


def range_pairs(x, eps: float) -> Pairs:
    """Every pair with cosine >= 1 - eps by exact faiss range search (blocks of queries)."""
    x = _as_float32(x)
    n, d = x.shape
    index = faiss.IndexFlatIP(d)
    index.add(x)
    out_i, out_j, out_s = [], [], []
    for start in range(0, n, _QUERY_BLOCK):
        lims, sims, ids = index.range_search(x[start:start + _QUERY_BLOCK], float(1.0 - eps - 1e-6))
        q = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = ids > q  # each pair once, no self-pairs
        out_i.append(q[keep])
        out_j.append(ids[keep].astype(np.int64))
        out_s.append(sims[keep])
    cat = (lambda a, t: np.concatenate(a).astype(t) if a else np.zeros(0, t))
    return Pairs(cat(out_i, np.int64), cat(out_j, np.int64), cat(out_s, np.float32), "range")


def semdedup_pairs(x, eps: float, n_clusters: Optional[int] = None, seed: int = 0, niter: int = 20) -> Pairs:
    """Pairs with cosine >= 1 - eps inside spherical k-means clusters (SemDeDup)."""
    x = _as_float32(x)
    n, d = x.shape
    k = n_clusters or max(1, int(round(math.sqrt(n))))
    k = min(k, n)
    if k < 1:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), "semdedup")
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, -(-n // k) * 4))
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    out_i, out_j, out_s = [], [], []
    for c in np.unique(assign):
        members = np.flatnonzero(assign == c)
        if len(members) < 2:
            continue
        s = x[members] @ x[members].T  # (m, m)
        a, b = np.nonzero(np.triu(s >= 1.0 - eps - 1e-6, 1))
        out_i.append(members[a])
        out_j.append(members[b])
        out_s.append(s[a, b])
    cat = (lambda a, t: np.concatenate(a).astype(t) if a else np.zeros(0, t))
    return Pairs(cat(out_i, np.int64), cat(out_j, np.int64), cat(out_s, np.float32), "semdedup")


def candidate_pairs(x, eps: float, method: str = "auto", **kw) -> Pairs:
    """`range` for n <= RANGE_MAX, else `semdedup` (method "auto"), or the method named."""
    if method not in METHODS:
        raise UsageError(f"`method` {method!r}: choose from {list(METHODS)}")
    if not 0.0 <= eps < 1.0:
        raise UsageError(f"`eps` must be in [0, 1), got {eps}")
    n = len(x)
    if method == "auto":
        method = "range" if n <= RANGE_MAX else "semdedup"
    return range_pairs(x, eps) if method == "range" else semdedup_pairs(x, eps, **kw)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(n,) connected-component label of each item of the pair graph."""
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def keep_greedy(x, pairs: Pairs, priority: Optional[np.ndarray] = None) -> dict[int, tuple[int, float]]:
    """Apply the keep rule (module docstring) -> {removed row: (kept row it duplicates, cosine)}.

    `priority` (n,) higher = kept first; None = "central" (cosine to the group's mean embedding).
    """
    x = _as_float32(x)
    n = len(x)
    if not len(pairs.i):
        return {}
    involved = np.unique(np.concatenate([pairs.i, pairs.j]))
    comp = _components(n, pairs.i, pairs.j)
    if priority is None:  # every member of a group with pairs is `involved`; group them by component label
        priority = np.zeros(n, np.float64)
        labels = comp[involved]
        by = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[by])) + 1
        for members in np.split(involved[by], bounds):
            centre = x[members].mean(0)
            centre /= max(float(np.linalg.norm(centre)), 1e-12)
            priority[members] = np.round(x[members] @ centre, 6)  # equal within float noise: position decides
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for a, b, s in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.sim.tolist()):
        neighbours.setdefault(a, []).append((b, s))
        neighbours.setdefault(b, []).append((a, s))
    order = sorted(involved.tolist(), key=lambda r: (-float(priority[r]), r))
    kept: set[int] = set()
    removed: dict[int, tuple[int, float]] = {}
    for r in order:
        near = [(s, k) for k, s in neighbours.get(r, ()) if k in kept]
        if near:
            s, k = max(near, key=lambda t: (t[0], -t[1]))
            removed[r] = (k, float(s))
        else:
            kept.add(r)
    return removed
