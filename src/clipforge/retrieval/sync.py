"""Keeping a faiss index in step with its embedding store.

The store's manifest is the commit point of every change to an index directory (build, update, delete):
index.faiss is derived from it and rewritten afterwards. A process killed between the two (or a reader that
looks in between) finds an index file from an older store generation. Every index file records the store
generation it reflects (`info["store_generation"]`); `sync_index` brings an older one up to date in memory:

- small collections (at most `EXACT_THRESHOLD` live vectors) get a fresh exact index of the store's vectors,
  so results are exactly what a rebuilt file would give;
- larger ones drop the ids the store no longer holds and add the ones it holds that the index lacks (a
  re-embedded changed item keeps its old vector in an approximate index until the writer's rebuild lands).

Writers (`clipforge index delete`, `index update`) save the synced index, so the repair also reaches the file.
"""
from __future__ import annotations

import logging

import numpy as np

from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.index_choice import EXACT_THRESHOLD

__all__ = ["index_generation", "is_current", "sync_index"]

log = logging.getLogger("clipforge.retrieval")


def index_generation(index) -> int | None:
    """The store generation an index (VectorIndex or ShardedIndex) was built or last synced at, if recorded."""
    g = getattr(index, "info", {}).get("store_generation")
    return None if g is None else int(g)


def is_current(index, store_generation: int, n_live: int | None = None) -> bool:
    """Whether `index` reflects the store at `store_generation`. An index that records no generation (merged
    from shard files by hand) counts as current when it holds `n_live` vectors."""
    g = index_generation(index)
    if g is None:
        return n_live is not None and len(index) == n_live
    return g == int(store_generation)


def sync_index(index, vectors: np.ndarray, ids: np.ndarray, store_generation: int, exact_small: bool = True):
    """-> (index, changes): an index holding exactly the store's live `ids` ((N,) int64) with `vectors`
    ((N, D) float32 unit rows), and {"rebuilt": bool, "removed": n, "added": m}. Returns `index` itself when it
    is current. The result records `store_generation`.

    exact_small=False keeps the index's kind whatever the size (what a writer saving the file wants: the
    user chose that kind); readers take the exact rebuild of small collections."""
    changes = {"rebuilt": False, "removed": 0, "added": 0}
    ids = np.asarray(ids, dtype=np.int64)
    if is_current(index, store_generation, len(ids)):
        return index, changes
    if exact_small and (len(ids) <= EXACT_THRESHOLD or not len(index)):
        fresh = VectorIndex.build(vectors, ids, "flat")
        fresh.info.update({"store_generation": int(store_generation),
                           "synced_from": {"kind": index.kind, "generation": index_generation(index)}})
        changes["rebuilt"] = True
        return fresh, changes
    have = np.asarray(index.ids(), dtype=np.int64)
    dead = np.setdiff1d(have, ids, assume_unique=False)
    missing = np.setdiff1d(ids, have, assume_unique=False)
    if len(dead):
        changes["removed"] = int(index.remove(dead))
    if len(missing):
        order = np.argsort(ids)
        rows = order[np.searchsorted(ids, missing, sorter=order)]
        index.add(np.asarray(vectors[rows], dtype=np.float32), missing)
        changes["added"] = int(len(missing))
    index.info["store_generation"] = int(store_generation)
    if changes["removed"] or changes["added"]:
        log.info("index synced with its store: %d removed, %d added", changes["removed"], changes["added"])
    return index, changes
