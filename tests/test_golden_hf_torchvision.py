"""`preprocess.convention: hf_torchvision` against transformers 5.x's default image processors (their torchvision
backend), on the golden images (issue 31, items 5-6; golden from tools/make_hf_torchvision_goldens.py)."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from golden_inputs import golden_images, image_digest
from clipforge.models import PreprocessConfig
from clipforge.models.transforms import EvalTransform

GOLDEN = Path(__file__).parent / "golden"
META = json.loads((GOLDEN / "preprocess_hf_torchvision.json").read_text())
ARRAYS = np.load(GOLDEN / "preprocess_hf_torchvision.npz")


def _transform(cname: str, convention: str) -> EvalTransform:
    c = META["configs"][cname]
    cfg = PreprocessConfig(mean=tuple(c["mean"]), std=tuple(c["std"]), interpolation=c["interpolation"],
                           resize_mode=c["resize_mode"], convention=convention)
    return EvalTransform(c["size"], cfg)


def _crop(key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(ARRAYS[key].tobytes())))


@pytest.mark.parametrize("cname", ["hf_clip", "hf_siglip"])
def test_hf_torchvision_matches_transformers_default_processor_bit_for_bit(cname):
    tf = _transform(cname, "hf_torchvision")
    images = dict(golden_images())
    assert len(META["images"]) == len(images) >= 20
    bad = []
    for entry in META["images"]:
        img = images[entry["name"]]
        assert image_digest(img) == entry["input_sha256"], entry["name"]
        out = tf(img.copy()).numpy()
        if hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest() != entry["output_sha256"][cname]:
            s = META["configs"][cname]["size"]
            ours = np.asarray(EvalTransform(s, tf.cfg.__class__(**{**tf.cfg.__dict__, "mean": (0.0,) * 3,
                                                                   "std": (1 / 255,) * 3}))(img.copy()))
            theirs = _crop(entry["crop"][cname]).transpose(2, 0, 1).astype(np.float32)
            bad.append((entry["name"], float(np.abs(ours - theirs).max())))  # crop difference, 0..255
    assert not bad, f"{len(bad)} of {len(META['images'])} images differ from transformers' default processor: {bad}"


def test_the_pil_convention_differs_from_the_default_processor_where_documented():
    """Why the convention exists: the PIL-backend convention ("hf") is not what `CLIPImageProcessor()` gives in
    transformers 5.x; on resized images the two backends' uint8 crops differ."""
    hf, tv = _transform("hf_clip", "hf"), _transform("hf_clip", "hf_torchvision")
    images = dict(golden_images())
    worst = 0.0
    for entry in META["images"]:
        img = images[entry["name"]]
        worst = max(worst, float(np.abs(hf(img.copy()).numpy() - tv(img.copy()).numpy()).max()))
    assert worst > 0.01
