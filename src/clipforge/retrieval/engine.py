"""An index directory opened for queries: metadata, vectors, the faiss index and (loaded on first use) the
model that embeds queries — shared by `clipforge search`, the HTTP service and Python users.

    engine = SearchEngine("my-index")
    for hit in engine.search("a red bicycle", k=10, filters=["path~*/2023/*"]):
        print(hit.rank, hit.id, hit.score, hit.metadata["path"])

Queries embed with the model, precision and engine the index was built with (index.json), unless another
engine is asked for. Model calls are
serialised by a lock (one forward at a time uses all cores better than several competing ones); text query
embeddings are kept in a small LRU cache, since users and web pages repeat queries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipforge.errors import ClipforgeError, UsageError
from clipforge.retrieval.build import INDEX_FILE, read_info
from clipforge.encode import Encoder
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.query import Hit, Searcher, Term, embed_query, parse_query
from clipforge.retrieval.sharded import open_index
from clipforge.retrieval.store import EmbeddingStore


class SearchEngine:
    def __init__(self, index_dir, device=None, model=None, text_cache: int = 4096, encode_engine: str | None = None,
                 threads: int | None = None):
        self.root = Path(index_dir)
        self.info = read_info(self.root)
        store = EmbeddingStore.open(self.root)
        self.store_stats = store.stats()
        x, ids = store.load("img")  # (N, D) float32 unit rows, (N,) int64
        self.metadata = store.metadata()
        p = self.root / INDEX_FILE
        self.index = open_index(p) if p.exists() else VectorIndex.build(x, ids, "flat")  # file or shards
        self.searcher = Searcher(self.index, self.metadata, x, ids)
        self.dim = x.shape[1]
        cols = self.metadata.column_names
        paths = self.metadata.column("path").to_pylist() if "path" in cols else [None] * len(ids)
        # The only way from a request to a file: an id present in the index maps to its recorded path.
        self._paths = {int(i): p for i, p in zip(self.metadata.column("id").to_pylist(), paths) if p}
        self._device = device
        # The runtime that embeds queries: as asked, else the one the index was built with (fp32 engines agree
        # within 1e-4 cosine distance; an int8 index needs an engine that offers int8).
        self._engine = {"engine": encode_engine or self.info.get("engine", "torch"), "threads": threads}
        if model is not None and not isinstance(model, Encoder):
            model = Encoder.from_model(model, precision=self.info["precision"])
        self._encoder = model  # None: loaded on first use
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = text_cache
        self.cache_hits = 0

    # -- the model --
    @property
    def encoder(self) -> Encoder:
        """The index's model in the index's precision (loaded on first use)."""
        with self._lock:
            if self._encoder is None:
                self._encoder = Encoder.load(self.info["model"], device=self._device, precision=self.info["precision"],
                                             **self._engine)
            return self._encoder

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32, cached per text."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        encoder = self.encoder if missing else None
        with self._lock:
            if missing:
                for t, v in zip(missing, encoder.encode_texts(missing).numpy()):
                    self._cache[t] = v
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self.cache_hits += 1
            out = []
            for t in texts:
                self._cache.move_to_end(t)
                out.append(self._cache[t])
        return np.stack(out)

    def encode_image(self, images: Sequence) -> np.ndarray:
        """(n, D) float32 for images given as paths, bytes or PIL images (`clipforge.encode.open_image`)."""
        encoder = self.encoder
        with self._lock:
            return encoder.encode_images(list(images)).numpy()

    # -- queries --
    def query_vector(self, text: str | None = None, image: Any = None, *, text_weight: float = 1.0,
                     image_weight: float = 1.0, terms: Sequence[Term] = (), like: int | None = None,
                     like_weight: float = 1.0, allow_paths: bool = True, base_dir=None) -> np.ndarray:
        """(D,) unit query vector from a query string (the query language), an image (path, bytes or PIL),
        extra terms, and/or an indexed item's own vector (`like`: "more like this")."""
        all_terms = list(terms)
        if text is not None and text.strip():
            for t in parse_query(text, allow_paths=allow_paths, base_dir=base_dir):
                t.weight *= text_weight
                all_terms.append(t)
        if image is not None:
            all_terms.append(Term("image", image, image_weight))
        v = np.zeros(self.dim, np.float32)
        if all_terms:
            v += embed_query(all_terms, self.encode_text, self.encode_image)
        if like is not None:
            if not self.has_id(like):
                raise UsageError(f"like: no item with id {like} in this index")
            v += like_weight * self.searcher.vectors_of([int(like)])[0]
        elif not all_terms:
            raise UsageError("a query needs text, an image, terms, or `like` (an item id)")
        norm = float(np.linalg.norm(v))
        if norm < 1e-6:
            raise UsageError("the query's terms cancel out (their weighted sum is zero)")
        return v / norm

    def search(self, text: str | None = None, image: Any = None, *, k: int = 20, offset: int = 0,
               filters: Sequence[str] = (), dedup: float | None = None, **query) -> list[Hit]:
        q = self.query_vector(text, image, **query)
        return self.searcher.search(q, k=k, offset=offset, filters=list(filters), dedup=dedup)

    # -- items --
    def has_id(self, item_id: int) -> bool:
        try:
            self.searcher.vectors_of([int(item_id)])
            return True
        except ClipforgeError:
            return False

    def item(self, item_id: int) -> dict | None:
        rows = self.searcher._metadata_rows([int(item_id)])
        return {"id": int(item_id), **rows[0]} if rows and rows[0] else None

    def path_of(self, item_id: int) -> str | None:
        """The indexed file of this id, or None (unknown id, or an item stored without a local file)."""
        return self._paths.get(int(item_id))

    def stats(self) -> dict:
        idx = self.info.get("index", {})
        return {"count": len(self.index), "dim": self.dim, "model": self.info["model"],
                "precision": self.info["precision"], "source": self.info["source"],
                "index_kind": self.index.kind, "recall@10": (idx.get("recall@10") or {}).get("recall@10"),
                "skipped": self.info.get("skipped", {}), "text_cache_hits": self.cache_hits,
                "has_text_embeddings": bool(self.info.get("text"))}
