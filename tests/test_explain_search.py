"""`search --heatmap` (issue 29): where the query matches, drawn over the top hits of the contact sheet."""
from __future__ import annotations

import numpy as np
from PIL import Image

from clipforge.cli import main


def test_search_writes_maps_into_the_sheet(tmp_path, photos_index, capsys):
    plain, heat = tmp_path / "plain.png", tmp_path / "heat.png"
    assert main(["search", str(photos_index), "a photo", "-k", "3", "--sheet", str(plain)]) == 0
    assert main(["search", str(photos_index), "a photo", "-k", "3", "--sheet", str(heat), "--heatmap", "2",
                 "--heatmap-method", "gradcam"]) == 0
    with Image.open(plain) as a, Image.open(heat) as b:
        assert a.size == b.size and np.abs(np.asarray(a, int) - np.asarray(b, int)).sum() > 0
    assert main(["search", str(photos_index), "a photo", "--heatmap"]) == 2
    assert "give --sheet PATH too" in capsys.readouterr().err
