"""Text embeddings for many concurrent callers: a bounded LRU cache plus micro-batching of the misses.

    texts = TextEmbeddingCache(encoder.encode_texts, cache_size=4096, max_batch=64)
    v = texts(["a red bicycle", "a cat"])          # (2, D) float32, from any thread
    texts.cached(["a cat"])                        # [vector or None]: a probe that never runs the model

Query services see the same texts again and again (users, web pages, retries) and many texts at once.
A repeated text is answered from the cache. Texts that miss are queued; the first waiting caller becomes the
*leader*: it takes up to `max_batch` queued texts — its own and everyone else's that arrived meanwhile —
through the model in ONE forward, hands each caller its vector, and steps down; a caller whose texts are
still queued takes over. So under concurrency the model runs few large batches instead of many of one text
(one text-tower call of 32 texts costs far less than 32 calls of one), no caller waits on batches that do
not hold its texts, and only one forward runs at a time. A text that fails to encode raises in every caller
that asked for it and is not cached.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["TextEmbeddingCache"]


class TextEmbeddingCache:
    """`encode(list[str]) -> (n, D)` (a tensor or an array) behind an LRU cache of `cache_size` texts
    (0 turns caching off) and micro-batches of at most `max_batch` texts. Thread-safe."""

    def __init__(self, encode: Callable[[list[str]], object], cache_size: int = 4096, max_batch: int = 64):
        if cache_size < 0 or max_batch < 1:
            raise ValueError(f"need cache_size >= 0 and max_batch >= 1, got {cache_size}, {max_batch}")
        self._encode, self.cache_size, self.max_batch = encode, cache_size, max_batch
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queued: OrderedDict[str, Future] = OrderedDict()  # waiting for a batch
        self._futures: dict[str, Future] = {}  # queued or being encoded: callers of the same text share one
        self._cond = threading.Condition()
        self._leading = False
        self.hits = self.misses = self.batches = self.encoded = 0

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, texts: Sequence[str]) -> list[Optional[np.ndarray]]:
        """The cached vector of each text, or None: never runs the model, never waits on it."""
        out = []
        with self._cond:
            for t in texts:
                v = self._cache.get(t)
                if v is not None:
                    self._cache.move_to_end(t)
                    self.hits += 1
                out.append(v)
        return out

    def has_all(self, texts: Sequence[str]) -> bool:
        """Whether every text is cached (a probe: changes no order and no counter)."""
        with self._cond:
            return all(t in self._cache for t in texts)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32, row i the embedding of texts[i]."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode")
        out: list = [None] * len(texts)
        mine: dict[int, Future] = {}
        with self._cond:
            for j, t in enumerate(texts):
                v = self._cache.get(t)
                if v is not None:
                    self._cache.move_to_end(t)
                    self.hits += 1
                    out[j] = v
                    continue
                f = self._futures.get(t)
                if f is None:
                    f = self._futures[t] = self._queued[t] = Future()
                    self.misses += 1
                mine[j] = f
            while not all(f.done() for f in mine.values()):
                if not self._leading and self._queued:
                    self._lead()
                else:
                    self._cond.wait()
        for j, f in mine.items():
            out[j] = f.result()  # raises what the encoder raised
        return np.stack(out)

    def _lead(self) -> None:
        """Run one batch of queued texts (called holding the lock; releases it around the forward)."""
        self._leading = True
        batch = []
        while self._queued and len(batch) < self.max_batch:
            batch.append(self._queued.popitem(last=False))
        self._cond.release()
        try:
            vecs = np.asarray(self._encode([t for t, _ in batch]), dtype=np.float32)  # (b, D)
            if vecs.shape[0] != len(batch):
                raise RuntimeError(f"the text encoder returned {vecs.shape[0]} rows for {len(batch)} texts")
            error = None
        except BaseException as e:  # noqa: BLE001 - handed to every caller of these texts
            error = e
        finally:
            self._cond.acquire()
        for j, (t, f) in enumerate(batch):
            self._futures.pop(t, None)
            if error is not None:
                f.set_exception(error)
                continue
            v = vecs[j].copy()
            f.set_result(v)
            if self.cache_size:
                self._cache[t] = v
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.batches += 1
        self.encoded += len(batch)
        self._leading = False
        self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._cache.clear()

    def stats(self) -> dict:
        return {"cached": len(self._cache), "hits": self.hits, "misses": self.misses, "batches": self.batches,
                "mean_batch": round(self.encoded / self.batches, 2) if self.batches else 0.0}
