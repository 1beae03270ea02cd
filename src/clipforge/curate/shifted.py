"""Copies shifted by a few percent of the image: the pixel descriptor compared after aligning.

The 16x16 pixel descriptor (`facts.pixel_descriptor`) sees resized and re-encoded copies, but a copy shifted by
one pixel of a 32-pixel image moves every cell by half its width: it lands 0.04-0.07 away, where distinct
handwritten digits already are (0.026). So the score job also keeps each image's 32x32 grey grid (`pixel_grid`,
1,024 bytes), and de-duplication compares every image, shifted by one grid cell (3% of its side) in each of the
8 directions, with every other image unshifted, both box-averaged to 16x16 (`shifted_pairs`).

An aligned copy matches almost exactly (within 2e-4 on the digits bench), while the best of 8 alignments
brings distinct images closer than any single comparison does (distinct digits from 0.018). So a shifted match
must be `SHIFT_STRICT` (4x) closer than an unshifted one: its pair is reported with the cosine
1 - (1 - aligned cosine) / SHIFT_STRICT, and the one radius `eps` then applies to both kinds.
"""
from __future__ import annotations

import faiss
import numpy as np

from clipforge.curate.near import Pairs

__all__ = ["GRID_SIDE", "SHIFT_STRICT", "SHIFTS", "grid_descriptors", "shifted_pairs", "merge_pairs"]

GRID_SIDE = 32
SHIFT_STRICT = 0.25
SHIFTS = tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0))
_BLOCK = 4096


def grid_descriptors(grids: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
    """(n, 1024) uint8 grids -> (n, 256) float32 descriptors of the grids shifted by (dx, dy) cells (the cells
    moved in are zero, the grey of nothing), box-averaged 2x2, mean removed, L2-normalised."""
    s = GRID_SIDE
    g = np.asarray(grids, np.float32).reshape(-1, s, s)
    if dx or dy:
        out = np.zeros_like(g)
        src_y, dst_y = (slice(0, s - dy), slice(dy, s)) if dy >= 0 else (slice(-dy, s), slice(0, s + dy))
        src_x, dst_x = (slice(0, s - dx), slice(dx, s)) if dx >= 0 else (slice(-dx, s), slice(0, s + dx))
        out[:, dst_y, dst_x] = g[:, src_y, src_x]
        g = out
    v = g.reshape(-1, s // 2, 2, s // 2, 2).mean((2, 4)).reshape(len(g), -1)
    v -= v.mean(1, keepdims=True)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def shifted_pairs(grids: np.ndarray, eps: float) -> Pairs:
    """Pairs (i < j) whose images match within `eps * SHIFT_STRICT` once one is shifted by a cell, with the
    scaled cosine described above (the best alignment of the pair)."""
    base = grid_descriptors(grids)
    n = len(base)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    radius = float(1.0 - eps * SHIFT_STRICT - 1e-6)
    out_i, out_j, out_s = [], [], []
    for dx, dy in SHIFTS:
        moved = grid_descriptors(grids, dx, dy)
        for start in range(0, n, _BLOCK):
            lims, sims, ids = index.range_search(moved[start:start + _BLOCK], radius)
            q = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims.astype(np.int64)))
            keep = ids != q
            out_i.append(np.minimum(q[keep], ids[keep]))
            out_j.append(np.maximum(q[keep], ids[keep]))
            out_s.append(1.0 - (1.0 - sims[keep]) / SHIFT_STRICT)
    cat = (lambda a, t: np.concatenate(a).astype(t) if a else np.zeros(0, t))
    return merge_pairs(Pairs(cat(out_i, np.int64), cat(out_j, np.int64), cat(out_s, np.float32), "shifted"))


def merge_pairs(*parts: Pairs, method: str | None = None) -> Pairs:
    """One `Pairs` holding each pair (i < j) once, with the highest cosine any part gives it."""
    i = np.concatenate([p.i for p in parts]) if parts else np.zeros(0, np.int64)
    j = np.concatenate([p.j for p in parts]) if parts else np.zeros(0, np.int64)
    s = np.concatenate([p.sim for p in parts]) if parts else np.zeros(0, np.float32)
    order = np.lexsort((-s, j, i))  # by pair, best cosine first
    i, j, s = i[order], j[order], s[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return Pairs(i[first], j[first], s[first].astype(np.float32), method or (parts[0].method if parts else "range"))
