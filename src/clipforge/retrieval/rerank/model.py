"""Kind "model": a second CLIP model re-scores candidates from their stored image files.

The candidates' files are the ones the index recorded (absolute paths), opened with
`clipforge.encode.open_image` (the index build's decoder: pixel limit, EXIF orientation, any mode -> RGB)
and embedded by an `Encoder` of the second model. Embeddings are kept in an LRU cache keyed by the file's
path, size and modification time, so a popular candidate is embedded once and a changed file again. The
query's text terms go through a `TextEmbeddingCache` of the second model (micro-batched, cached).

Cost: the first query pays one image forward per uncached candidate (rerank_k of them); for a model of
ViT-B/32's size on a CPU that is seconds. A collection searched often is better served by kind "index"
(the second model's embeddings computed once by `clipforge index build`).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clipforge.encode import Encoder, ImageError, TextEmbeddingCache, open_image
from clipforge.registry import Option
from clipforge.retrieval.rerank.base import RERANKERS, Reranker

__all__ = ["ModelReranker"]


@RERANKERS.register("model")
class ModelReranker(Reranker):
    """A second model (any model reference) embedding the candidates' image files and the query."""

    options = (Option("device", str, help="cpu, cuda, cuda:1 ... for the second model (default: cuda if available)"),
               Option("precision", str, "auto", help="the second model's weights: auto | fp32 | bf16 | fp16"),
               Option("cache", int, 50_000, help="candidate embeddings kept in memory (LRU)"),
               Option("batch_size", int, 32, help="candidate images per forward"))

    def __init__(self, model, device: Optional[str] = None, precision: str = "auto", cache: int = 50_000,
                 batch_size: int = 32):
        super().__init__()
        if isinstance(model, Encoder):
            self.encoder, self.ref = model, str(getattr(model.model, "name", "model"))
        else:
            ref = str(Path(model).expanduser().resolve()) if Path(str(model)).expanduser().is_dir() else str(model)
            self.encoder, self.ref = Encoder.load(ref, device=device, precision=precision), ref
        self.dim = self.encoder.embed_dim
        self.cache_size, self.batch_size = int(cache), int(batch_size)
        self._model_lock = threading.Lock()  # one forward at a time: concurrent ones only compete for cores
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._items_lock = threading.Lock()
        self.texts = TextEmbeddingCache(self._forward_texts)
        self.embedded = 0

    def _forward_texts(self, texts: list[str]) -> np.ndarray:
        with self._model_lock:
            return self.encoder.encode_texts(texts).numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.texts(texts)

    def encode_images(self, images: list) -> np.ndarray:
        with self._model_lock:
            return self.encoder.encode_images(list(images), self.batch_size).numpy()

    @staticmethod
    def _cache_key(item: dict) -> Optional[tuple]:
        path = item.get("path")
        return None if not path else (str(path), item.get("size"), item.get("mtime"))

    def item_vectors(self, items: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(items), self.dim), np.float32)
        ok = np.zeros(len(items), dtype=bool)
        todo = []
        with self._items_lock:
            for j, item in enumerate(items):
                key = self._cache_key(item)
                if key is None:  # an item stored without a local file (a URL, a shard member)
                    self.skipped.add(str(item.get("key", item.get("id"))), "no_image")
                    continue
                v = self._items.get(key)
                if v is not None:
                    self._items.move_to_end(key)
                    out[j], ok[j] = v, True
                else:
                    todo.append((j, key))
        if not todo:
            return out, ok
        images, where = [], []
        for j, key in todo:
            try:
                images.append(open_image(key[0]))
                where.append((j, key))
            except ImageError as e:  # gone, unreadable or oversized since it was indexed: first-stage order
                self.skipped.add(os.path.basename(key[0]), e.reason)
        if images:
            vecs = self.encode_images(images)  # (n, D)
            with self._items_lock:
                for (j, key), v in zip(where, vecs):
                    out[j], ok[j] = v, True
                    self._items[key] = v
                while len(self._items) > self.cache_size:
                    self._items.popitem(last=False)
                self.embedded += len(where)
        return out, ok

    def describe(self) -> dict:
        return {"kind": self.name, "model": self.ref, "precision": self.encoder.precision,
                "cached_items": len(self._items), "embedded": self.embedded, "text_cache": self.texts.stats(),
                "skipped": dict(self.skipped)}
