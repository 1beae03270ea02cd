"""Kind "hnsw": a graph, IndexIDMap2(IndexHNSWFlat). HNSW cannot delete, so a removed vector's id-map entry
becomes -1 and search skips it; graphs of separate shards cannot be joined."""

from __future__ import annotations

import faiss

from clipforge.registry import Option
from clipforge.retrieval.kinds.base import INDEX_KINDS, IndexKind

__all__ = ["Hnsw"]


@INDEX_KINDS.register("hnsw")
class Hnsw(IndexKind):
    """A navigable small-world graph over the exact vectors (M links per node)."""

    options = (Option("M", int, 32, help="graph links per node"),
               Option("efConstruction", int, 80, help="candidate list size while building"),
               Option("efSearch", int, 128, help="candidate list size while searching"))
    search_params = ("efSearch",)
    tune_param = "efSearch"
    merge_refusal = ("HNSW graphs cannot be merged into one; use mode='query' (search the shards together) or "
                     "rebuild one HNSW index")

    def create(self, d: int, n: int, params: dict) -> faiss.Index:
        inner = faiss.IndexHNSWFlat(d, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(params["efConstruction"])
        inner.hnsw.efSearch = int(params["efSearch"])
        return faiss.IndexIDMap2(inner)

    def memory(self, n: int, d: int, params: dict) -> int:
        return n * (4 * d + 8 + int(params["M"] * 2 * 4 * 1.1))  # level-0 has 2M links of 4 B, upper levels ~10%

    def set_search_param(self, index: faiss.Index, params: dict, name: str, value) -> None:
        faiss.downcast_index(index.index).hnsw.efSearch = int(value)
