"""Kind "flat": exact search, IndexIDMap2(IndexFlatIP); removing an id deletes its row."""

from __future__ import annotations

import faiss

from clipforge.retrieval.kinds.base import INDEX_KINDS, IndexKind

__all__ = ["Flat"]


@INDEX_KINDS.register("flat")
class Flat(IndexKind):
    """Exact inner-product search over every vector."""

    def create(self, d: int, n: int, params: dict) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))

    def memory(self, n: int, d: int, params: dict) -> int:
        return n * (4 * d + 8)

    def marks_removed(self, index: faiss.Index) -> bool:
        return False  # remove_ids is native

    def merge(self, base: faiss.Index, other: faiss.Index) -> None:
        base.merge_from(other)
