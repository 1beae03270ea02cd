"""Index kinds: a registry (`INDEX_KINDS`), one module per family, each declaring its parameters and how its
faiss index is built, trained, searched, sized and merged (see `base.py`).

  flat      IndexIDMap2(IndexFlatIP)      exact; remove_ids is native                          (flat.py)
  hnsw      IndexIDMap2(IndexHNSWFlat)    M, efConstruction, efSearch; removes by -1 marking   (hnsw.py)
  ivf_flat  IndexIVFFlat (ids native)     nlist, nprobe; remove_ids is native                  (ivf.py)
  ivf_pq    IVF-PQ + refinement store     nlist, m, nbits, nprobe, k_factor, refine            (ivf_pq.py)
  ivf_pqfs  IVF + fast-scan PQ + exact    nlist, m, nprobe, k_factor, refine, quantizer        (ivf_pq.py)
            re-ranking
"""
from clipforge.retrieval.kinds import flat, hnsw, ivf, ivf_pq  # noqa: F401  (register the built-in kinds)
from clipforge.retrieval.kinds.base import INDEX_KINDS, IndexKind, index_kind

__all__ = ["INDEX_KINDS", "IndexKind", "index_kind"]
