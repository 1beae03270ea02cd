"""The offline demo: everything runs on data that ships inside installed packages."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("clipforge.demo")


def _sample_photos():
    """scikit-image's bundled photos (no network)."""
    from PIL import Image
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "horse", "camera", "coins", "moon"]
    out = {}
    for n in names:
        arr = getattr(data, n)()
        if arr.dtype != "uint8":
            arr = (arr.astype("float32") / max(arr.max(), 1) * 255).astype("uint8")
        out[n] = Image.fromarray(arr).convert("RGB")
    return out


def run_demo(out_dir, quick: bool = False) -> dict:
    from clipforge.models import create_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = create_model("tiny").eval()
    photos = _sample_photos()
    with torch.no_grad():
        px = torch.stack([model.preprocess(im) for im in photos.values()])
        img = model.encode_image(px)
        txt = model.encode_text(model.tokenizer([f"a photo of a {n}" for n in photos]))
    print(f"model tiny: {model.num_parameters():,} parameters, embed dim {model.config.embed_dim}")
    print(f"encoded {len(photos)} bundled photos -> image embeddings {tuple(img.shape)}, "
          f"text embeddings {tuple(txt.shape)}")
    return {"images": tuple(img.shape), "texts": tuple(txt.shape)}
