"""Contact sheet: grid geometry, thumbnails where the hits' images are, grey tiles for unreadable files."""

import numpy as np
from PIL import Image

from clipforge.retrieval.searcher import Hit
from clipforge.retrieval.sheet import contact_sheet


def test_sheet_places_thumbnails_in_rank_order(tmp_path):
    colours = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]
    hits = []
    for i, c in enumerate(colours):
        Image.new("RGB", (300, 200), c).save(tmp_path / f"{i}.png")
        hits.append(Hit(i, 40 + i, 0.9 - 0.1 * i, {"path": str(tmp_path / f"{i}.png"), "caption": f"colour {i}"}))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    hits.append(Hit(3, 99, 0.1, {"path": str(tmp_path / "bad.jpg"), "caption": "broken"}))
    hits.append({"rank": 4, "id": 7, "score": 0.05, "caption": "dict hit without a path"})

    out = tmp_path / "sheet.png"
    sheet = contact_sheet(hits, out, thumb=64, cols=3, title="query: colours")
    assert out.exists() and Image.open(out).size == sheet.size
    a = np.asarray(sheet)
    pad, top, cell_w, cell_h = 8, 12 + 8, 64 + 8, 64 + 12 * 3 + 8
    assert sheet.size == (pad + 3 * cell_w, pad + top + 2 * cell_h)
    for n, c in enumerate(colours):  # centre of each thumbnail has the hit's colour
        x, y = pad + n * cell_w + 32, pad + top + 32
        assert tuple(a[y, x]) == c
    for n in (3, 4):  # unreadable / missing image: grey tile, no crash
        x, y = pad + (n % 3) * cell_w + 5, pad + top + cell_h + 5
        assert tuple(a[y, x]) == (225, 225, 225)
    # text was drawn under the first thumbnail (dark pixels in the label band)
    band = a[pad + top + 64 + 2: pad + top + 64 + 14, pad: pad + 64]
    assert (band.sum(axis=2) < 200).any()


def test_empty_sheet(tmp_path):
    sheet = contact_sheet([], tmp_path / "e.png")
    assert sheet.size[0] > 0 and (tmp_path / "e.png").exists()
