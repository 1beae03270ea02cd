"""The IVF family: a coarse quantiser cuts the space into `nlist` lists, a search scans `nprobe` of them.

`IvfKind` is what every IVF kind shares (list sizing, the spherical k-means, nprobe, merging shards' lists);
kind "ivf_flat" stores the exact vectors in the lists (IndexIVFFlat, collection ids stored natively,
remove_ids native). The product-quantised kinds are in `ivf_pq.py`.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from clipforge.errors import UsageError
from clipforge.registry import Option
from clipforge.retrieval.faiss_runtime import omp_threads, set_blas_for
from clipforge.retrieval.kinds.base import INDEX_KINDS, IndexKind

__all__ = ["IvfKind", "IvfFlat", "nlist_for", "nprobe_for", "train_size_for", "ivf_parts"]

KMEANS_NITER = 10  # coarse k-means iterations: faiss's 25 buy no recall here (docs/design_notes.md)
HNSW_QUANTIZER_FROM = 8192  # from this many lists an HNSW graph over the centroids, a flat scan below (same)


def nlist_for(n: int, per_sqrt: int = 4) -> int:
    # ≈ 4 sqrt(n) lists (2 sqrt(n) for ivf_pqfs: 2048 at 1M, measured in docs/bench_1m.md), a power of
    # two, with ≥ 39 training points per list (faiss's own floor).
    return int(max(1, min(2 ** round(math.log2(max(1.0, per_sqrt * math.sqrt(n)))), n // 39)))


def nprobe_for(nlist: int) -> int:
    # ivf_pqfs at 1M x 512 (embedding-shaped): nprobe 128 of 2048 lists with k_factor 20 gave recall@10
    # 0.982 (96: 0.975, 192: 0.994); build_faiss still tunes nprobe to the target on the real vectors
    return max(1, nlist // 16)


def train_size_for(nlist: int) -> int:
    """k-means sample: 100k rows, or 40 per list when there are more lists (faiss warns under 39)."""
    return max(100_000, 40 * nlist)


def set_nprobe(ivf, nprobe: int) -> None:
    ivf.nprobe = nprobe
    q = faiss.downcast_index(ivf.quantizer)
    if isinstance(q, faiss.IndexHNSW):  # the graph must find nprobe good lists, not just nprobe lists
        q.hnsw.efSearch = 2 * nprobe


def ivf_parts(index: faiss.Index):
    """(id_map wrapper or None, refine index or None, the IVF) of an IVF kind's faiss object."""
    wrapper = index if isinstance(index, faiss.IndexIDMap2) else None
    inner = faiss.downcast_index(index.index) if wrapper is not None else index
    refine = inner if isinstance(inner, faiss.IndexRefine) else None
    ivf = faiss.downcast_index(refine.base_index) if refine is not None else faiss.extract_index_ivf(inner)
    return wrapper, refine, ivf


class IvfKind(IndexKind):
    """What the IVF kinds share. Subclasses implement `lists` (the IVF over a quantiser, and the faiss object
    that holds it) and `min_train_vectors`."""

    search_params = ("nprobe",)
    tune_param = "nprobe"
    shared_training = True
    lists_per_sqrt = 4  # nlist ≈ this * sqrt(n)

    def create(self, d: int, n: int, params: dict) -> faiss.Index:
        params["nlist"] = int(params["nlist"] or nlist_for(n, self.lists_per_sqrt))
        self.size_coarse(params)
        ip = faiss.METRIC_INNER_PRODUCT
        quantizer = faiss.IndexHNSWFlat(d, 32, ip) if params.get("quantizer") == "hnsw" else faiss.IndexFlatIP(d)
        # (faiss's python wrappers keep the quantiser / sub-indexes alive via referenced_objects)
        ivf, index = self.lists(quantizer, d, params)
        set_nprobe(ivf, int(params["nprobe"]))
        return index

    def size_coarse(self, params: dict) -> None:
        """Fill the coarse-quantiser parameters that depend on nlist (called once nlist is known)."""

    def lists(self, quantizer: faiss.Index, d: int, params: dict):
        """(the IVF, the faiss object the VectorIndex holds)."""
        raise NotImplementedError

    def min_train_vectors(self, params: dict) -> tuple[int, str]:
        """The fewest training vectors this kind accepts, and why."""
        nlist = int(params["nlist"])
        return nlist, f"one per list, nlist={nlist}"

    def set_search_param(self, index: faiss.Index, params: dict, name: str, value) -> None:
        if name == "nprobe":
            set_nprobe(faiss.extract_index_ivf(index), int(value))

    def train_size(self, params: dict) -> int:
        return train_size_for(params["nlist"])

    def train(self, index: faiss.Index, sample: np.ndarray, params: dict, seed: int) -> None:
        need, why = self.min_train_vectors(params)
        if len(sample) < need:
            raise UsageError(f"{self.name} index: needs at least {need} vectors to train ({why}), got "
                             f"{len(sample)}; for a collection this small choose `index_kind` flat (exact "
                             f"search) or auto")
        ivf = faiss.extract_index_ivf(index)
        d = sample.shape[1]
        # 1. the coarse k-means, all threads (BLAS on the whole sample); spherical, as faiss does for IP
        set_blas_for(len(sample))
        km = faiss.Kmeans(d, params["nlist"], niter=KMEANS_NITER, seed=seed, spherical=True,
                          max_points_per_centroid=len(sample))  # the caller chose the sample size
        km.train(sample)
        ivf.quantizer.add(km.centroids)  # a filled quantiser counts as trained: faiss skips its k-means
        # 2. the codebooks (PQ: one tiny k-means per sub-space) on ONE thread: faiss's OpenMP barriers stall
        # whenever another process holds a core (docs/design_notes.md)
        with omp_threads(1):
            index.train(sample)

    def tune_limit(self, n: int, params: dict) -> int:
        return params["nlist"]

    def merge(self, base: faiss.Index, other: faiss.Index) -> None:
        bw, br, bivf = ivf_parts(base)
        ow, orf, oivf = ivf_parts(other)
        offset = bivf.ntotal if bw is not None else 0  # wrapped IVFs number their rows 0..n-1
        bivf.merge_from(oivf, offset)
        if br is not None:  # the refinement store: append the other shard's codes row for row
            bref, oref = faiss.downcast_index(br.refine_index), faiss.downcast_index(orf.refine_index)
            bref.add_sa_codes(faiss.vector_to_array(oref.codes).reshape(oref.ntotal, oref.code_size))
            br.ntotal = bivf.ntotal
        if bw is not None:
            ids = np.concatenate([faiss.vector_to_array(bw.id_map), faiss.vector_to_array(ow.id_map)])
            faiss.copy_array_to_vector(ids, bw.id_map)
            bw.ntotal = bivf.ntotal
            bw.construct_rev_map()

    def codes_in_lists(self, index: faiss.Index) -> bool:
        wrapper, refine, _ = ivf_parts(index)
        return wrapper is None and refine is None


@INDEX_KINDS.register("ivf_flat")
class IvfFlat(IvfKind):
    """IVF lists of the exact vectors (the collection ids stored in the lists)."""

    options = (Option("nlist", int, None, help="coarse lists (default ≈ 4 sqrt(n))"),
               Option("nprobe", int, 32, help="lists scanned per query"))

    def lists(self, quantizer: faiss.Index, d: int, params: dict):
        ivf = faiss.IndexIVFFlat(quantizer, d, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        return ivf, ivf  # stores the collection ids itself

    def memory(self, n: int, d: int, params: dict) -> int:
        return n * (4 * d + 8)
