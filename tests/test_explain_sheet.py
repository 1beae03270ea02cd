"""Contact sheets with maps (issue 29): a hit's heatmap is drawn over its own thumbnail only, hot cells warm."""
from __future__ import annotations

import numpy as np
from PIL import Image

from clipforge.retrieval.sheet import contact_sheet


def test_a_heatmap_is_drawn_over_its_hit_only(tmp_path):
    img = Image.new("RGB", (64, 64), (128, 128, 128))
    hits = [{"id": 1, "rank": 0, "score": 0.5}, {"id": 2, "rank": 1, "score": 0.4}]
    grid = np.zeros((4, 4), np.float32)
    grid[0, 3] = 1.0  # hot in the top-right cell
    plain = np.asarray(contact_sheet(hits, load=lambda h: img, thumb=64), dtype=np.int32)
    drawn = np.asarray(contact_sheet(hits, load=lambda h: img, thumb=64, heatmaps={1: grid}), dtype=np.int32)
    changed = np.abs(plain - drawn).sum(-1) > 0
    pad, cell_w = 8, 64 + 8
    first, second = changed[:, pad:pad + 64], changed[:, pad + cell_w:pad + cell_w + 64]
    assert first.any() and not second[pad:pad + 64].any()  # the second hit's thumbnail is untouched
    hot = np.asarray(contact_sheet(hits, load=lambda h: img, thumb=64, heatmaps={1: grid}))[pad:pad + 64, pad:pad + 64]
    warm = hot[:16, 48:].astype(int)  # the hot cell: red-ish; the far corner: blue-ish
    cold = hot[48:, :16].astype(int)
    assert (warm[..., 0] - warm[..., 2]).mean() > (cold[..., 0] - cold[..., 2]).mean() + 40
