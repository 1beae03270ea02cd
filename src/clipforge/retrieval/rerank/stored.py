"""Kind "index": the second model's embeddings, precomputed by an index build over the same source.

    build_index("files:photos", "tiny", "idx")                     # first stage (a fast model)
    build_index("files:photos", "runs/big/final", "idx-big")       # the second model, once
    IndexSearcher("idx", rerank="idx-big", rerank_k=100).search("a heron")

Candidates are looked up in the second index by their key (the source's stable sample id, the same in both
indexes), so re-scoring 100 candidates is a gather and a (100, D) x (D,) product: no image is decoded at
query time. The query is embedded by the second index's own model in its precision. When the second index
changes on disk (`index update`), `refresh()` reloads it. Items missing from it (added to the first index
since) keep their first-stage order.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clipforge.encode import Encoder, TextEmbeddingCache
from clipforge.errors import ClipforgeError
from clipforge.registry import Option
from clipforge.retrieval.index_dir import INFO_FILE, IndexDir, read_info
from clipforge.retrieval.rerank.base import RERANKERS, Reranker
from clipforge.retrieval.store import EmbeddingStore
from clipforge.retrieval.store_files import MANIFEST_FILE

__all__ = ["IndexReranker"]


def _signature(root: Path) -> tuple:
    """The second index's stored vectors and manifest change together: its store manifest and index.json."""
    return IndexDir(root).signature((MANIFEST_FILE, INFO_FILE))


@RERANKERS.register("index")
class IndexReranker(Reranker):
    """A second index directory over the same source: its stored embeddings, looked up by item key."""

    options = (Option("device", str, help="device of the second index's model, for query texts and images"),)

    def __init__(self, index: str, device: Optional[str] = None):
        super().__init__()
        self.root = Path(index).expanduser()
        self._device = device
        self._encoder: Optional[Encoder] = None
        self._model_lock = threading.Lock()
        self.texts = TextEmbeddingCache(self._forward_texts)
        self._load()

    def _load(self) -> None:
        sig = _signature(self.root)
        info = read_info(self.root)
        with EmbeddingStore.open(self.root) as store:
            x, ids = store.load("img")  # (N, D) unit rows
            keys = store.metadata(["key"]).column("key").to_pylist()
        if len(keys) != len(x):
            raise ClipforgeError(f"{self.root}: embeddings and metadata do not line up; the store is damaged")
        model = (info["model"], info["precision"])
        if self._encoder is not None and model != self._model:
            self._encoder = None  # rebuilt with another model: load that one on next use
            self.texts.clear()
        self._model, self.info = model, info
        self._vectors, self._row = x, {str(k): i for i, k in enumerate(keys)}
        self.dim, self._sig = x.shape[1], sig

    @property
    def encoder(self) -> Encoder:
        with self._model_lock:
            if self._encoder is None:
                self._encoder = Encoder.load(self._model[0], device=self._device, precision=self._model[1])
            return self._encoder

    def _forward_texts(self, texts: list[str]) -> np.ndarray:
        encoder = self.encoder
        with self._model_lock:
            return encoder.encode_texts(texts).numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.texts(texts)

    def encode_images(self, images: list) -> np.ndarray:
        encoder = self.encoder
        with self._model_lock:
            return encoder.encode_images(list(images)).numpy()

    def item_vectors(self, items: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        vectors, row = self._vectors, self._row  # one consistent version, even while refresh() swaps them
        rows = np.array([row.get(str(item.get("key")), -1) for item in items], dtype=np.int64)
        ok = rows >= 0
        out = np.zeros((len(items), self.dim), np.float32)
        out[ok] = vectors[rows[ok]]
        for item, hit in zip(items, ok):
            if not hit:
                self.skipped.add(str(item.get("key", item.get("id"))), "missing_file")
        return out, ok

    def refresh(self) -> bool:
        if _signature(self.root) == self._sig:
            return False
        self._load()
        return True

    def describe(self) -> dict:
        return {"kind": self.name, "index": str(self.root), "model": self._model[0], "precision": self._model[1],
                "items": len(self._row), "skipped": dict(self.skipped)}
