"""The Searcher: a query vector -> k filtered, de-duplicated, paginated `Hit`s over an index, its metadata and
(for de-duplication and exact filtered search) its vectors."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from clipforge.errors import ClipforgeError, UsageError
from clipforge.retrieval.filters import Filter, filter_mask

__all__ = ["Searcher", "Hit", "as_ids"]

_INT64 = np.iinfo(np.int64)


def as_ids(ids) -> np.ndarray:
    """Item ids -> (n,) int64. An id outside int64 (a request may send 2**70) cannot name any item: it becomes
    -1, which no item has, so lookups report "no such item" instead of overflowing."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "i":
        return ids.astype(np.int64, copy=False)
    out = np.empty(len(ids), np.int64)
    for j, i in enumerate(ids):
        v = int(i)
        out[j] = v if _INT64.min <= v <= _INT64.max else -1
    return out


@dataclass
class Hit:
    rank: int       # 0-based over the whole result list (offset included)
    id: int
    score: float    # cosine similarity to the query, by the model of the stage that scored it
    metadata: dict = field(default_factory=dict)
    stage: int = 1  # 1: the index's own model; 2: a reranker's model (see retrieval/rerank)
    stage1_score: Optional[float] = None  # the first stage's score of a re-scored hit

    def to_dict(self, item: Optional[dict] = None) -> dict:
        """The one JSON form of a hit (`clipforge search` prints it, the HTTP service sends it): its item's
        fields — `item`, a form of them the caller prepared (the service's: no server paths), else the
        metadata — then rank, id, score, stage, and stage1_score when a second stage re-scored it."""
        out = {**(self.metadata if item is None else item), "rank": self.rank, "id": self.id, "score": self.score,
               "stage": self.stage}
        if self.stage1_score is not None:
            out["stage1_score"] = self.stage1_score
        return out


class Searcher:
    """Index + metadata (+ vectors for de-duplication and exact filtered search).

    index: anything with `search(q (n, D), k) -> (scores, ids)` and len(); metadata: pa.Table with an `id`
    column; vectors / vector_ids: (N, D) unit rows and their ids (e.g. EmbeddingStore.load()).
    """

    exact_subset_max = 20_000  # filters that leave at most this many rows are searched exactly
    row_cache = 65_536  # metadata rows kept as dicts (popular hits): a pyarrow gather per search costs more

    def __init__(self, index, metadata: pa.Table | None = None, vectors: np.ndarray | None = None,
                 vector_ids: np.ndarray | None = None):
        self.index, self.metadata = index, metadata
        self.vectors = None if vectors is None else np.asarray(vectors, dtype=np.float32)
        if self.vectors is not None:
            vid = np.asarray(vector_ids, dtype=np.int64)
            self._v_order = np.argsort(vid)
            self._v_sorted = vid[self._v_order]
        if metadata is not None:
            mid = metadata.column("id").to_numpy().astype(np.int64)
            self._m_ids, self._m_order = mid, np.argsort(mid)
            self._m_sorted = mid[self._m_order]
        self._row_dicts: dict[int, dict] = {}  # id -> metadata row (without `id`), at most row_cache of them
        self._row_lock = threading.Lock()

    @staticmethod
    def _rows(sorted_ids, order, ids) -> np.ndarray:
        ids = as_ids(ids)
        if not len(sorted_ids):  # an emptied index: no id is known (order[pos] would be out of bounds)
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    def known(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which ids are live items (in the vectors, else the metadata, given)."""
        if self.vectors is not None:
            return self._rows(self._v_sorted, self._v_order, ids) >= 0
        if self.metadata is not None:
            return self._rows(self._m_sorted, self._m_order, ids) >= 0
        return np.asarray(ids) >= 0

    def vectors_of(self, ids) -> np.ndarray:
        rows = self._rows(self._v_sorted, self._v_order, ids)
        if (rows < 0).any():
            raise ClipforgeError("some hit ids have no stored vector (index and store out of sync?)")
        return self.vectors[rows]

    def search(self, q: np.ndarray, k: int = 10, offset: int = 0, filters: Sequence[Filter | str] = (),
               dedup: float | None = None, hidden: Sequence[str] = ()) -> list[Hit]:
        """Hits offset..offset+k-1 of the ranked list, after filters and near-duplicate collapsing.

        dedup: drop a hit whose cosine to a higher-ranked kept hit exceeds this (e.g. 0.95).
        hidden: metadata columns the filters may not name (see `parse_filter`).
        Filtering happens after retrieval, fetching more until enough hits survive; when the filters leave
        few rows (<= exact_subset_max) and vectors are available, those rows are scored exactly instead.
        """
        if k < 1 or offset < 0:
            raise UsageError(f"need k >= 1 and offset >= 0, got k={k}, offset={offset}")
        if dedup is not None and not 0.0 <= dedup <= 1.0:
            raise UsageError(f"dedup is a cosine similarity threshold in [0, 1], got {dedup}")
        if dedup is not None and self.vectors is None:
            raise UsageError("near-duplicate collapsing needs the stored vectors (pass vectors=)")
        q = np.asarray(q, dtype=np.float32).reshape(1, -1)  # (1, D)
        need = offset + k
        allowed = None
        if filters:
            if self.metadata is None:
                raise UsageError("filters need metadata")
            allowed = np.sort(self._m_ids[filter_mask(self.metadata, filters, hidden)])
            if len(allowed) == 0:
                return []
        if allowed is not None and self.vectors is not None and len(allowed) <= self.exact_subset_max:
            scores = self.vectors_of(allowed) @ q[0]  # (n_allowed,)
            order = np.argsort(-scores, kind="stable")
            kept = self._collapse(allowed[order], scores[order], dedup, need)
        else:
            total = len(self.index) + getattr(self.index, "n_dead", 0)
            fetch = min(total, need * (4 if (allowed is not None or dedup is not None) else 1))
            while True:
                s, i = self.index.search(q, max(1, fetch))
                ids, sc = i[0], s[0]
                ok = self.known(ids)  # -1 padding, and ids an index file still holds after their deletion
                if allowed is not None:
                    ok &= np.isin(ids, allowed)
                kept = self._collapse(ids[ok], sc[ok], dedup, need)
                if len(kept) >= need or fetch >= total:
                    break
                fetch = min(total, fetch * 4)
        page = kept[offset:need]
        meta = self.metadata_rows([i for i, _ in page])
        return [Hit(offset + r, int(i), float(s), m) for r, ((i, s), m) in enumerate(zip(page, meta))]

    def _collapse(self, ids: np.ndarray, scores: np.ndarray, dedup: float | None, need: int) -> list:
        """Greedy in rank order: keep a hit unless it is a near-duplicate of a kept one."""
        if dedup is None:
            return list(zip(ids[:need].tolist(), scores[:need].tolist()))
        kept = []
        kept_vecs = np.empty((min(need, len(ids)), self.vectors.shape[1]), np.float32)  # (n_kept, D), filled in order
        for start in range(0, len(ids), 256):  # vectors fetched in blocks; stop early once enough survive
            block = ids[start:start + 256]
            vecs = self.vectors_of(block)  # (b, D)
            for j, v in enumerate(vecs):
                n = len(kept)
                if n and float(np.max(kept_vecs[:n] @ v)) > dedup:
                    continue
                kept.append((int(block[j]), float(scores[start + j])))
                kept_vecs[n] = v
                if len(kept) >= need:
                    return kept
        return kept

    def metadata_rows(self, ids: list[int]) -> list[dict]:
        """Each id's metadata row as a dict without `id` ({} for an unknown id). Treat the dicts as read-only:
        they are shared through a cache."""
        if self.metadata is None or not ids:
            return [{} for _ in ids]
        with self._row_lock:
            cached = [self._row_dicts.get(int(i)) for i in ids]
        missing = [i for i, c in zip(ids, cached) if c is None]
        if missing:
            rows = self._rows(self._m_sorted, self._m_order, missing)
            found = self.metadata.take(pa.array(rows[rows >= 0])).drop_columns(["id"]).to_pylist()  # one gather
            it = iter(found)
            fresh = {int(i): (next(it) if r >= 0 else {}) for i, r in zip(missing, rows)}
            with self._row_lock:
                for i, r in zip(missing, rows):
                    if r >= 0:
                        self._row_dicts[int(i)] = fresh[int(i)]
                while len(self._row_dicts) > self.row_cache:
                    self._row_dicts.pop(next(iter(self._row_dicts)))  # oldest first
            cached = [c if c is not None else fresh[int(i)] for i, c in zip(ids, cached)]
        return cached
