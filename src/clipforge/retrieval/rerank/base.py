"""The reranker interface, the registry of kinds, and re-ordering a first stage's hits."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from clipforge.data.decode import SkipCounter
from clipforge.errors import UsageError
from clipforge.registry import Option, Registry
from clipforge.retrieval.index_dir import IndexDir
from clipforge.retrieval.query_language import Term
from clipforge.retrieval.query_vector import compose_vector
from clipforge.retrieval.searcher import Hit

__all__ = ["RERANKERS", "Reranker", "create_reranker", "rerank_hits", "DEFAULT_RERANK_K"]

RERANKERS = Registry("reranker", param="rerank_kind")
DEFAULT_RERANK_K = 100  # INQUIRE's Rerank protocol re-scores a fixed 100 candidates


class Reranker:
    """A second model over the same collection. Subclasses set `dim` and implement the three encoders.

    `item_vectors(items)` receives the candidates as dicts of their metadata (`id`, `key`, `path`, `size`,
    `mtime`, ...) and returns ((n, D) float32 unit rows, (n,) bool: which rows could be computed).
    `skipped` counts candidates that could not be scored, by reason.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    dim: int

    def __init__(self):
        self.skipped = SkipCounter()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def encode_images(self, images: list) -> np.ndarray:
        raise NotImplementedError

    def item_vectors(self, items: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def query_vector(self, terms: Sequence[Term], like: Sequence[tuple[dict, float]] = ()) -> np.ndarray | None:
        """(D,) unit query vector in this model's space, or None when a "more like this" item cannot be
        embedded by it (the search then keeps the first stage's order)."""
        like_vecs = []
        if like:
            vecs, ok = self.item_vectors([item for item, _ in like])
            if not ok.all():
                return None
            like_vecs = [(v, w) for v, (_, w) in zip(vecs, like)]
        return compose_vector(list(terms), self.encode_texts, self.encode_images, like_vecs)

    def refresh(self) -> bool:
        """Pick up changes to what the reranker reads (e.g. a rebuilt second index); True when reloaded."""
        return False

    def describe(self) -> dict:
        return {"kind": self.name}


def create_reranker(spec: Any, **options) -> Reranker:
    """A Reranker as given; an index directory -> kind "index"; anything else is a model reference -> kind
    "model". `options` are the kind's own (e.g. device, precision, cache)."""
    if isinstance(spec, Reranker):
        if options:
            raise UsageError(f"a ready reranker takes no options (got {', '.join(f'`{k}`' for k in options)})")
        return spec
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise UsageError(f"`rerank` must be a model reference or an index directory, got {spec!r}")
    p = Path(os.path.expanduser(str(spec)))
    kind = "index" if p.is_dir() and IndexDir(p).info_path.is_file() else "model"
    return RERANKERS.create(kind, str(spec), **options)


def rerank_hits(reranker: Reranker, hits: Sequence[Hit], query: np.ndarray | None) -> list[Hit]:
    """`hits` re-ordered by the second model's score against `query` (its (D,) query vector; None keeps
    the first stage's order). Ranks restart at hits[0].rank; equal scores keep the first stage's order."""
    if not hits:
        return []
    start = hits[0].rank
    if query is None:
        return list(hits)
    vecs, ok = reranker.item_vectors([{"id": h.id, **h.metadata} for h in hits])
    scores = vecs @ np.asarray(query, dtype=np.float32)  # (n,)
    scored = [j for j in range(len(hits)) if ok[j]]
    scored.sort(key=lambda j: -float(scores[j]))  # stable: ties keep the first stage's order
    out = [Hit(0, hits[j].id, float(scores[j]), hits[j].metadata, 2, hits[j].score) for j in scored]
    out += [Hit(0, h.id, h.score, h.metadata, 1) for j, h in enumerate(hits) if not ok[j]]
    for r, h in enumerate(out):
        h.rank = start + r
    return out
