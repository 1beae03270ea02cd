"""A query's unit vector: its terms embedded (texts and images through the caller's encoders), normalised,
summed with their signed weights, plus "more like this" item vectors, and normalised again."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from clipforge.encode import open_image
from clipforge.errors import UsageError
from clipforge.retrieval.query_language import Term

__all__ = ["embed_query", "compose_vector"]


def embed_query(terms: Sequence[Term], encode_text: Callable[[list[str]], np.ndarray],
                encode_image: Callable[[list], np.ndarray] | None = None) -> np.ndarray:
    """Weighted sum of normalised term embeddings, normalised: -> (D,) float32.

    encode_text(list[str]) -> (n, D); encode_image(list[PIL.Image]) -> (n, D). Each is called once. Image
    terms (a path, bytes or a PIL image) are opened with `clipforge.encode.open_image`: the same decoder as
    the index build, so a file gives the same pixels (EXIF orientation included) on every path.
    """
    texts = [t for t in terms if t.kind == "text"]
    images = [t for t in terms if t.kind == "image"]
    if images and encode_image is None:
        raise UsageError("this query has image terms but no image encoder was given")
    parts, weights = [], []
    if texts:
        parts.append(np.asarray(encode_text([t.value for t in texts]), dtype=np.float32))
        weights += [t.weight for t in texts]
    if images:
        parts.append(np.asarray(encode_image([open_image(t.value) for t in images]), dtype=np.float32))
        weights += [t.weight for t in images]
    e = np.concatenate(parts)  # (n_terms, D)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    v = (np.asarray(weights, dtype=np.float32)[:, None] * e).sum(0)  # (D,)
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        raise UsageError("the query's terms cancel out (their weighted sum is zero)")
    return v / norm


def compose_vector(terms: Sequence[Term], encode_text: Callable[[list[str]], np.ndarray],
                   encode_image: Callable[[list], np.ndarray] | None = None,
                   like: Sequence[tuple[np.ndarray, float]] = ()) -> np.ndarray:
    """The unit query vector of terms plus "more like this" items: the terms' `embed_query` vector (when
    there are terms) plus weight * each item vector (D,), normalised. Every stage of a search (the index's
    model, a reranker's) builds its query this way, from the same terms."""
    if not terms and not like:
        raise UsageError("a query needs text, an image, terms, or `like` (an item id)")
    v = embed_query(terms, encode_text, encode_image) if terms else 0.0
    for vec, weight in like:
        v = v + weight * np.asarray(vec, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        raise UsageError("the query's terms cancel out (their weighted sum is zero)")
    return v / norm
