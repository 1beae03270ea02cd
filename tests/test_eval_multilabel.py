"""Multilabel zero-shot classification from the CLI: per-class AP and mAP, recomputed with scikit-learn."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score

from clipforge.cli import main
from clipforge.models import load_model

CKPT_SEED = 3
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def test_multilabel_map_from_the_cli_matches_sklearn(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        on = sorted(rng.choice(list(COLOURS), size=int(rng.integers(1, 3)), replace=False))
        img = np.zeros((32, 32, 3), np.uint8)
        for j, c in enumerate(on):  # one stripe per colour present
            img[:, j * 16:(j + 1) * 16] = COLOURS[c]
        img = np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)  # no two alike: no ties
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "labels": on})
    rows.append({"image": "0.png", "id": "nolabels"})  # counted as skipped, not scored
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "t.txt").write_text("a picture with {} in it.\n")
    out = tmp_path / "r.jsonl"
    assert main(["eval", "-m", ckpt, "--task", "zeroshot-multilabel", "-d", f"jsonl:{tmp_path / 'm.jsonl'}",
                 "--templates", str(tmp_path / "t.txt"), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    names = sorted(COLOURS)  # the distinct names found
    model = load_model(ckpt).eval()
    with torch.no_grad():
        im = F.normalize(model.encode_image(torch.stack([model.preprocess(Image.open(tmp_path / r["image"]).convert("RGB"))
                                                         for r in rows[:-1]])), dim=-1)
        tx = F.normalize(model.encode_text(model.tokenizer([f"a picture with {c} in it." for c in names])), dim=-1)
    scores = (im @ tx.T).numpy()
    y = np.array([[c in r["labels"] for c in names] for r in rows[:-1]], dtype=int)
    aps = [average_precision_score(y[:, j], scores[:, j]) for j in range(len(names))]
    m = rec["metrics"]
    assert m["n"] == 24 and m["num_positive_classes"] == 3 and rec["num_classes"] == 3
    for c, ap in zip(names, aps):
        assert m[f"AP/{c}"] == pytest.approx(ap, abs=1e-6), c
    assert m["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert rec["skipped"]["by_reason"].get("no_label") == 1


def test_label_keys_take_one_class_per_column():
    from clipforge.evaluate.zeroshot_multilabel import label_sets

    meta = [{"color": "red", "shape": "circle"}, {"color": "blue"}, {"other": 1}, {"labels": ["a", "b"]}]
    assert label_sets(meta, ["color", "shape"]) == [["red", "circle"], ["blue"], None, None]
    assert label_sets(meta, ["labels"]) == [None, None, None, ["a", "b"]]
