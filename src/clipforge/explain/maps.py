"""`explain(model, image, texts)`: per-text similarity maps of an image, as arrays.

A map is computed on the grid of the model's image tower (`models.dense`) for an image squashed to a square
(`size` px, never cropped), so cell (i, j) covers the same fraction of the image whatever its aspect;
`Explanation.upsampled` resamples the maps bilinearly onto the image's own pixels. Dense maps are cosines
(-1..1) of each cell with the text embedding; Grad-CAM maps are >= 0 in units of the pooled cosine's gradient.
Their scales differ: compare maps of one method, or rank cells within one map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.encode import Encoder, as_encoder
from clipforge.encode.dense import encode_dense, encode_gradcam
from clipforge.encode.images import ImageError, ImageInput, open_image
from clipforge.errors import UsageError
from clipforge.models.dense import DENSE_METHODS, resolve_dense_method

__all__ = ["EXPLAIN_METHODS", "MAX_TEXTS", "Explanation", "explain", "explain_vectors", "heatmaps"]

EXPLAIN_METHODS = (*DENSE_METHODS, "gradcam")
MAX_TEXTS = 16  # texts per call (one map each); a caller may allow more with `max_texts`


@dataclass
class Explanation:
    """The maps of one image: `maps[t]` is where `texts[t]` matches.

    texts:      the texts (or query labels), in the order given
    method:     the method that ran (auto resolved: maskclip | tokens | gradcam)
    maps:       (T, h, w) float32 on the tower's grid
    scores:     (T,) float32, the pooled image-text cosine (what a search or classification ranks by)
    image_size: (width, height) of the image as given
    """

    texts: list[str]
    method: str
    maps: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]

    def upsampled(self, size: Optional[tuple[int, int]] = None) -> np.ndarray:
        """(T, H, W) float32: the maps resampled bilinearly onto `size` (width, height; default the image's)."""
        w, h = size or self.image_size
        m = torch.from_numpy(self.maps).unsqueeze(1)  # (T, 1, h', w')
        return F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()

    def peaks(self) -> list[tuple[int, int]]:
        """Each map's maximum as an (x, y) pixel of the image (the centre of the best cell)."""
        w, h = self.image_size
        gh, gw = self.maps.shape[1:]
        out = []
        for m in self.maps:
            i, j = np.unravel_index(int(np.argmax(m)), m.shape)
            out.append((int((j + 0.5) * w / gw), int((i + 0.5) * h / gh)))
        return out

    def to_dict(self) -> dict:
        """JSON-ready: texts, method, grid, scores, maps (nested lists, rounded to 1e-5)."""
        return {"texts": self.texts, "method": self.method, "grid": list(self.maps.shape[1:]),
                "image_size": list(self.image_size), "scores": [round(float(s), 6) for s in self.scores],
                "maps": np.round(self.maps.astype(np.float64), 5).tolist(), "peaks": [list(p) for p in self.peaks()]}


def _encoder(model) -> Encoder:
    """An `Encoder` as given, one wrapping a loaded model, or one loading a reference."""
    if isinstance(model, Encoder):
        return model
    return Encoder.load(str(model)) if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__") \
        else as_encoder(model)


def _method(encoder: Encoder, method: str) -> str:
    if method not in EXPLAIN_METHODS:
        raise UsageError(f"unknown `method` {method!r}; valid: {', '.join(EXPLAIN_METHODS)}")
    return "gradcam" if method == "gradcam" else resolve_dense_method(encoder.model, method)


def explain_vectors(model, images: Sequence[ImageInput], vectors, labels: Sequence[str], *, method: str = "auto",
                    size: Optional[int] = None, max_pixels: Optional[int] = None) -> list[Explanation]:
    """The maps of each image for each query vector: `vectors` (T, D) (text embeddings, a search's query
    vector, an image embedding), `labels` one name per vector. `model`: a model, an `Encoder` or a reference."""
    encoder = _encoder(model)
    method = _method(encoder, method)
    q = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    if q.ndim != 2 or q.shape[1] != encoder.embed_dim or len(q) != len(labels) or not len(q):
        raise UsageError(f"need one label per query vector of {encoder.embed_dim} dims, got {len(labels)} "
                         f"labels and vectors of shape {tuple(q.shape)}")
    q = F.normalize(q, dim=-1)
    opened = [open_image(im, **({} if max_pixels is None else {"max_pixels": max_pixels})) for im in images]
    if not opened:
        raise UsageError("no images given")
    if method == "gradcam":
        maps = encode_gradcam(encoder, opened, q, size=size)  # (N, T, h, w)
    else:
        dense = encode_dense(encoder, opened, method=method, size=size)  # (N, h, w, D)
        maps = torch.einsum("nhwd,td->nthw", dense, q)
    scores = encoder.encode_images(opened) @ q.T  # (N, T)
    return [Explanation(list(labels), method, maps[i].numpy().astype(np.float32),
                        scores[i].numpy().astype(np.float32), im.size) for i, im in enumerate(opened)]


def explain(model, image: ImageInput, texts: Sequence[str] | str, *, method: str = "auto",
            size: Optional[int] = None, max_texts: int = MAX_TEXTS) -> Explanation:
    """Where each text matches `image` (a path, bytes or PIL image): one map per text (see `Explanation`).

    `model`: a model reference, a loaded model or an `Encoder` (torch engine). `method`: auto | maskclip |
    tokens | gradcam. `size`: the square the image is squashed to (a multiple of the tower's cell; default
    `models.dense.default_dense_size`). At most `max_texts` texts, none empty."""
    texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
    if not texts:
        raise UsageError("give at least one text in `texts`")
    if len(texts) > max_texts:
        raise UsageError(f"{len(texts)} texts given; `max_texts` is {max_texts} (one map each)")
    if any(not t.strip() for t in texts):
        raise UsageError("`texts` holds an empty text")
    encoder = _encoder(model)
    _method(encoder, method)  # an unknown method is refused before any text is encoded
    return explain_vectors(encoder, [image], encoder.encode_texts(texts), texts, method=method, size=size)[0]


def heatmaps(model, images: Mapping[Hashable, ImageInput], vector, label: str = "query", *,
             method: str = "auto", size: Optional[int] = None) -> dict:
    """key -> (h, w) float32 map of one query `vector` (D,) on each image (a search's top hits): where the
    query matches. An image that cannot be read is left out (its key is missing), never an error."""
    encoder = _encoder(model)
    q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    out = {}
    for key, image in images.items():
        try:
            out[key] = explain_vectors(encoder, [image], q, [label], method=method, size=size)[0].maps[0]
        except ImageError:
            continue
    return out
