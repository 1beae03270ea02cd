"""An index directory opened for queries: metadata, vectors, the faiss index and (loaded on first use) the
model that embeds queries — shared by `clipforge search`, the HTTP service and Python users.

    searcher = IndexSearcher("my-index")
    for hit in searcher.search("a red bicycle", k=10, filters=["path~*/2023/*"]):
        print(hit.rank, hit.id, hit.score, hit.metadata["path"])

Queries embed with the model, precision and engine the index was built with (index.json), unless another
engine is asked for, and with the token merging it was built with (`models.token_merge`, unless another is
asked for): image queries then embed like the collection (text towers are never merged). Text query
embeddings go through a `TextEmbeddingCache`: repeated texts come from an LRU cache, and the misses of
concurrent callers share one forward (micro-batches). One model forward runs at a time (several competing ones
only fight over the same cores).

Live updates: the index directory's state is an immutable `IndexView`. `refresh()` loads a new view when the
directory changed (`index update`, `index delete`, a rebuild) and swaps it in with one reference assignment:
a search in flight keeps the view it started with, the next one sees the new one. `watch()` calls
`refresh()` from a background thread. A view whose index file lags its store (a writer killed between
the two, or caught mid-update) is synced in memory (`sync.py`), so a deleted item never comes back.

Two-stage search: with `rerank` (a second model, or a second index of the same source: `retrieval/rerank`),
the first `rerank_k` hits are re-scored by the second model; each hit says which stage scored it.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from clipforge.encode import Encoder, TextEmbeddingCache
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.token_merge import token_merge_setting
from clipforge.retrieval.filters import parse_filter
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.index_dir import IndexDir
from clipforge.retrieval.query_language import Term
from clipforge.retrieval.query_vector import compose_vector
from clipforge.retrieval.rerank import DEFAULT_RERANK_K, Reranker, create_reranker, rerank_hits
from clipforge.retrieval.search_query import SearchQuery
from clipforge.retrieval.searcher import Hit, Searcher
from clipforge.retrieval.sharded import open_index
from clipforge.retrieval.store import EmbeddingStore
from clipforge.retrieval.sync import sync_index

__all__ = ["IndexSearcher", "IndexView"]

log = logging.getLogger("clipforge.retrieval")


class IndexView:
    """One consistent state of an index directory, loaded once and never changed afterwards."""

    def __init__(self, root):
        self.root = Path(root)
        layout = IndexDir(self.root)
        self.signature = layout.signature()  # taken first: a change while loading is seen next time
        self.info = layout.read_info()
        with EmbeddingStore.open(self.root) as store:
            self.store_stats = store.stats()
            self.generation = store.generation
            x, ids = store.load("img")  # (N, D) float32 unit rows, (N,) int64
            self.metadata = store.metadata()
        p = layout.index_path
        self.synced: dict = {}
        if p.exists():
            index = open_index(p)  # a file, or a manifest of shards
            try:
                index, self.synced = sync_index(index, x, ids, self.generation)
            except (RuntimeError, ClipforgeError) as e:  # e.g. lists on a read-only disk: stale ids are dropped
                log.warning("%s lags its store and could not be synced in memory (%s)", p, e)
        else:
            index = VectorIndex.build(x, ids, "flat")
        self.index = index
        self.searcher = Searcher(index, self.metadata, x, ids)
        self.dim = x.shape[1]
        cols = self.metadata.column_names
        paths = self.metadata.column("path").to_pylist() if "path" in cols else [None] * len(ids)
        # The only way from a request to a file: an id present in the index maps to its recorded path.
        self.paths = {int(i): p for i, p in zip(self.metadata.column("id").to_pylist(), paths) if p}

    @property
    def model_key(self) -> tuple:
        return (str(self.info["model"]), str(self.info["precision"]))


class IndexSearcher:
    """Queries over one index directory (see the module docstring).

    model: an already loaded model or Encoder for queries (default: the index's, loaded on first use).
    text_cache: texts whose embeddings are kept (0: none); text_batch: most texts per text forward.
    rerank: a second stage (`create_reranker`: a model reference, an index directory, or a Reranker), with
    rerank_options for its kind; rerank_k: candidates it re-scores. encode_engine / threads: the runtime that
    embeds queries (`clipforge.encode` engines; default: the one the index was built with). token_merge /
    merge_method: token merging in the query model's ViT image tower (`models.token_merge`; default: what the
    index records, so image queries and image classification embed like the collection; 0: exact). A `model`
    given as a model (not an Encoder) gets the index's precision and this token merging, in place.
    hidden_columns: metadata columns no search through this searcher may filter on (`filters.parse_filter`):
    what a service never shows its clients (the HTTP service: the server's file paths), so a filter cannot
    probe them; each search may add more. Python and CLI users, who own the files, keep the default ().
    """

    def __init__(self, index_dir, device=None, model=None, text_cache: int = 4096, *, text_batch: int = 64,
                 rerank: Any = None, rerank_k: int = DEFAULT_RERANK_K, rerank_options: Optional[dict] = None,
                 encode_engine: str | None = None, threads: int | None = None,
                 hidden_columns: Sequence[str] = (), token_merge=None, merge_method: Optional[str] = None):
        self.root = Path(index_dir)
        self.hidden_columns = tuple(hidden_columns)
        self.view = IndexView(self.root)
        self._device = device
        # The runtime that embeds queries: as asked, else the one the index was built with (fp32 engines agree
        # within 1e-4 cosine distance; an int8 index needs an engine that offers int8).
        self._engine = {"engine": encode_engine or self.view.info.get("engine", "torch"), "threads": threads}
        if token_merge is None and merge_method is not None and self.view.info.get("token_merge") is None:
            raise UsageError("`merge_method` needs `token_merge` (the tokens merged per block)")
        token_merge_setting(token_merge, merge_method)  # a bad setting fails now, not at the first query
        self._merge_asked = (token_merge, merge_method)
        self._merge = self._merge_for(self.view)
        if model is not None and not isinstance(model, Encoder):
            model = Encoder.from_model(model, precision=self.view.info["precision"], token_merge=self._merge)
        self._encoder = model  # None: loaded on first use
        self._encoder_key = self.view.model_key
        self._model_lock = threading.Lock()  # one forward at a time
        self._load_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.texts = TextEmbeddingCache(self.encode_text_uncached, text_cache, text_batch)
        if int(rerank_k) < 1:
            raise UsageError(f"`rerank_k` must be >= 1, got {rerank_k}")
        self.rerank_k = int(rerank_k)
        self.reranker: Optional[Reranker] = None
        if rerank is not None:
            self.reranker = create_reranker(rerank, **(rerank_options or {}))
        elif rerank_options:
            raise UsageError("`rerank_options` need `rerank` (a model reference or an index directory)")
        self.reloads = 0
        self._watcher: Optional[_Watcher] = None

    # -- the current view (read once per operation: a refresh may swap it at any time) --
    info = property(lambda self: self.view.info)
    metadata = property(lambda self: self.view.metadata)
    searcher = property(lambda self: self.view.searcher)
    index = property(lambda self: self.view.index)
    dim = property(lambda self: self.view.dim)
    store_stats = property(lambda self: self.view.store_stats)
    cache_hits = property(lambda self: self.texts.hits)

    # -- the model --
    def _merge_for(self, view: IndexView) -> Optional[dict]:
        """The token merging queries embed with over `view`: as asked, else what its index records."""
        token_merge, method = self._merge_asked
        if token_merge is None and method is None:
            return view.info.get("token_merge")
        tm = token_merge_setting(view.info.get("token_merge") if token_merge is None else token_merge, method)
        return tm.to_dict() if tm is not None else None

    def _load(self, ref: str, precision: str, merge: Optional[dict]) -> Encoder:
        return Encoder.load(ref, device=self._device, precision=precision, token_merge=merge, **self._engine)

    @property
    def encoder(self) -> Encoder:
        """The index's model in the index's precision, with its token merging (loaded on first use)."""
        with self._load_lock:
            if self._encoder is None:
                self._encoder = self._load(*self._encoder_key, self._merge)
            return self._encoder

    def encode_text_uncached(self, texts: list[str]) -> np.ndarray:
        """(n, D) float32 in one forward (under the model lock), bypassing the cache: for prompt sets that
        would only crowd the queries out of it."""
        encoder = self.encoder
        with self._model_lock:
            return encoder.encode_texts(texts).numpy()

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32: cached per text; concurrent callers' misses share a forward."""
        return self.texts(list(texts))

    def encode_image(self, images: Sequence) -> np.ndarray:
        """(n, D) float32 for images given as paths, bytes or PIL images (`clipforge.encode.open_image`)."""
        encoder = self.encoder
        with self._model_lock:
            return encoder.encode_images(list(images)).numpy()

    @property
    def model_key(self) -> tuple:
        """(model reference, precision) of the model queries are embedded with."""
        return self._encoder_key

    @property
    def token_merge(self) -> Optional[dict]:
        """The token merging image queries embed with (`TokenMerge.to_dict()`; None: exact)."""
        return self._merge

    # -- live updates --
    def refresh(self, force: bool = False) -> bool:
        """Load the index directory again if it changed (or `force`), then swap the new view in. Returns
        whether it swapped. The model is reloaded only if the index now names another model, precision or (when
        none was asked for) token merging."""
        with self._refresh_lock:
            if not force and IndexDir(self.root).signature() == self.view.signature:
                if self.reranker is not None:
                    self.reranker.refresh()
                return False
            view = IndexView(self.root)
            merge = self._merge_for(view)
            if view.model_key != self._encoder_key or merge != self._merge:  # rebuilt: its queries need that
                encoder = self._load(*view.model_key, merge)
                with self._load_lock:
                    self._encoder, self._encoder_key, self._merge = encoder, view.model_key, merge
                self.texts.clear()
            self.view = view  # the swap: one reference assignment
            self.reloads += 1
            if self.reranker is not None:
                self.reranker.refresh()
            return True

    def watch(self, interval: float = 0.25) -> "_Watcher":
        """Refresh from a daemon thread every `interval` seconds (idempotent); `.stop()` ends it."""
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = _Watcher(self, interval)
            self._watcher.start()
        return self._watcher

    # -- queries --
    def _like(self, view: IndexView, like: Optional[int]) -> Optional[int]:
        if like is not None and not view.searcher.known([like])[0]:
            raise UsageError(f"like: no item with id {like} in this index")
        return like

    def query_vector(self, query: SearchQuery | str | None = None, image: Any = None, **fields) -> np.ndarray:
        """(D,) unit query vector of a `SearchQuery` (or its text, `image` and fields, as `search` takes them):
        its query string (the query language), image (path, bytes or PIL), extra terms, and/or an indexed
        item's own vector (`like`: "more like this")."""
        q = SearchQuery.of(query, image, **fields)
        view = self.view
        return self._vector(view, q.all_terms(), self._like(view, q.like), q.like_weight)

    def _vector(self, view: IndexView, terms: list[Term], like: Optional[int], like_weight: float) -> np.ndarray:
        like_vecs = [] if like is None else [(view.searcher.vectors_of([int(like)])[0], like_weight)]
        return compose_vector(terms, self.encode_text, self.encode_image, like_vecs)

    def search(self, query: SearchQuery | str | None = None, image: Any = None, **fields) -> list[Hit]:
        """Hits offset..offset+k-1 of a `SearchQuery` (or of its text, `image` and any other of its fields by
        name: `search("a red bicycle", k=10)`). With a reranker (and `rerank` not False), the first stage's top
        `rerank_k` (after filters and dedup) are re-scored by the second model and come first; hits beyond
        them keep the first stage's order and score (`stage` 1). `filters` may not name the searcher's
        `hidden_columns` nor the query's (refused before any model runs)."""
        q = SearchQuery.of(query, image, **fields)
        view = self.view  # this search finishes on this view, whatever refresh() does meanwhile
        hidden = (*self.hidden_columns, *q.hidden_columns)
        filters = [parse_filter(f, hidden=hidden) if isinstance(f, str) else f for f in q.filters]
        all_terms = q.all_terms()
        like = self._like(view, q.like)
        vec = self._vector(view, all_terms, like, q.like_weight)
        k, offset = q.k, q.offset
        if q.rerank and self.reranker is None:
            raise UsageError("`rerank` asked for, but this searcher has no second stage (give `rerank=`)")
        if self.reranker is None or q.rerank is False:
            return view.searcher.search(vec, k=k, offset=offset, filters=filters, dedup=q.dedup, hidden=hidden)
        if k < 1 or offset < 0:
            raise UsageError(f"need k >= 1 and offset >= 0, got k={k}, offset={offset}")
        hits = view.searcher.search(vec, k=max(self.rerank_k, offset + k), filters=filters, dedup=q.dedup,
                                    hidden=hidden)
        like_items = [] if like is None else [({"id": int(like), **view.searcher.metadata_rows([int(like)])[0]},
                                               q.like_weight)]
        q2 = self.reranker.query_vector(all_terms, like_items)
        ranked = rerank_hits(self.reranker, hits[:self.rerank_k], q2) + hits[self.rerank_k:]
        return ranked[offset:offset + k]

    # -- items --
    def has_id(self, item_id: int) -> bool:
        return bool(self.view.searcher.known([item_id])[0])

    def item(self, item_id: int) -> dict | None:
        rows = self.view.searcher.metadata_rows([int(item_id)])
        return {"id": int(item_id), **rows[0]} if rows and rows[0] else None

    def path_of(self, item_id: int) -> str | None:
        """The indexed file of this id, or None (unknown id, or an item stored without a local file)."""
        return self.view.paths.get(int(item_id))

    def stats(self) -> dict:
        view = self.view
        idx = view.info.get("index", {})
        out = {"count": len(view.index), "dim": view.dim, "model": view.info["model"],
               "precision": view.info["precision"], "source": view.info["source"],
               "token_merge": self._merge, "index_token_merge": view.info.get("token_merge"),
               "index_kind": view.index.kind, "recall@10": (idx.get("recall@10") or {}).get("recall@10"),
               "skipped": view.info.get("skipped", {}), "text_cache_hits": self.texts.hits,
               "text_cache": self.texts.stats(), "has_text_embeddings": bool(view.info.get("text")),
               "columns": [c for c in view.metadata.column_names if c != "id" and c not in self.hidden_columns],
               "store_generation": view.generation, "reloads": self.reloads}
        if self.reranker is not None:
            out["rerank"] = {**self.reranker.describe(), "rerank_k": self.rerank_k}
        return out

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()


class _Watcher(threading.Thread):
    """Polls the index directory and refreshes the searcher when it changed (see IndexSearcher.watch)."""

    def __init__(self, searcher: IndexSearcher, interval: float):
        super().__init__(name="clipforge-index-watcher", daemon=True)
        self.searcher, self.interval = searcher, interval
        self._stop_event = threading.Event()
        self.errors = 0

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.searcher.refresh()
            except Exception as e:  # noqa: BLE001 - caught mid-write (a shard compacted away): next poll
                self.errors += 1
                log.info("index reload failed, retrying (%s: %s)", type(e).__name__, e)

    def stop(self) -> None:
        self._stop_event.set()
