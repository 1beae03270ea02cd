"""Facts about one image or caption that curation rules use, computed where the image is decoded.

`image_facts(sample, image)` is the `inspect` hook `clipforge.encode` runs in its decoding workers (beside the
preprocessing the model needs), so hashing and describing the original image costs no second decode:

  file_bytes     the size of the encoded image as stored (LAION dropped images under 5 KB)
  bytes_hash     BLAKE2b-128 of the stored bytes: byte-identical copies (the same file under another name)
  pixel_hash     BLAKE2b-128 of the decoded RGB pixels and their size: the same picture re-saved with other
                 compression settings or metadata (an exact copy to a viewer, different bytes on disk)
  pixel_feat     (with `pixel_features=True`) a 16x16 grey thumbnail, mean removed, L2-normalised (256 floats):
                 a model-free near-duplicate descriptor robust to resizing and re-encoding, not to crops or shifts
  pixel_grid     (with `pixel_features=True`) the 32x32 grey thumbnail as 1,024 bytes: what `shifted.py` aligns
                 to find copies shifted by a cell (3% of the side)

`caption_facts(text)` gives the caption statistics: characters and words.
"""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

__all__ = ["image_facts", "caption_facts", "pixel_descriptor", "pixel_grid", "PIXEL_FEAT_SIDE", "PIXEL_GRID_SIDE"]

PIXEL_FEAT_SIDE = 16
PIXEL_GRID_SIDE = 32


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p)
    return h.hexdigest()


def pixel_descriptor(image: Image.Image, side: int = PIXEL_FEAT_SIDE) -> np.ndarray:
    """(side*side,) float32: the grey image box-averaged to side x side, mean removed, unit length (zeros for a
    flat image). Box averaging makes copies at other resolutions land on nearly the same vector."""
    grey = image.convert("L").resize((side, side), Image.BOX)
    v = np.asarray(grey, dtype=np.float32).reshape(-1)
    v = v - v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def pixel_grid(image: Image.Image, side: int = PIXEL_GRID_SIDE) -> np.ndarray:
    """(side*side,) uint8: the grey image box-averaged to side x side."""
    return np.asarray(image.convert("L").resize((side, side), Image.BOX), dtype=np.uint8).reshape(-1)


def image_facts(sample, image: Image.Image, *, pixel_features: bool = False) -> dict:
    """Facts about one decoded sample (see the module docstring). Width and height come from the encoder."""
    data = sample.image_bytes()
    rgb = image.convert("RGB")
    out = {"file_bytes": len(data), "bytes_hash": _digest(data),
           "pixel_hash": _digest(f"{rgb.width}x{rgb.height}".encode(), rgb.tobytes())}
    if pixel_features:
        out["pixel_feat"] = pixel_descriptor(image)
        out["pixel_grid"] = pixel_grid(image)
    return out


def caption_facts(text: str) -> dict:
    """Characters and whitespace-separated words of a caption (LAION dropped alt-texts under 5 characters)."""
    text = text or ""
    return {"caption_chars": len(text.strip()), "caption_words": len(text.split())}
