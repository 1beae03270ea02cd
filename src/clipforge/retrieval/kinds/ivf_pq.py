"""The product-quantised IVF kinds: compressed codes in the lists, a shortlist re-ranked by a refinement store.

  ivf_pq    IndexIDMap2(IndexRefine(IVFPQ, flat|fp16|sq8 store)), or a plain IVFPQ (refine=None, ids native).
            nlist, m, nbits, nprobe, k_factor, refine
  ivf_pqfs  IndexIDMap2(IndexRefineFlat(IVFPQFastScan)): 4-bit PQ codes scanned with SIMD ("fast scan"), the
            shortlist (k * k_factor) re-ranked with the exact vectors, so returned scores are exact inner
            products; an HNSW graph over the centroids as coarse quantiser from 8192 lists.
            nlist, m, nprobe, k_factor, refine, quantizer

A refined index cannot take ids itself: IndexIDMap2 maps its row numbers to ours, and removes by -1 marking
(as for hnsw); a plain IVF stores our ids in its lists, so its lists alone can be merged, even on disk.
"""

from __future__ import annotations

import faiss

from clipforge.errors import UsageError
from clipforge.registry import Option
from clipforge.retrieval.kinds.base import INDEX_KINDS
from clipforge.retrieval.kinds.ivf import HNSW_QUANTIZER_FROM, IvfKind, nprobe_for

__all__ = ["IvfPq", "IvfPqFastScan", "pq_m", "REFINE_BYTES"]

# Bytes per dimension of the IVF-PQ refinement store (re-scores the PQ shortlist with better vectors).
REFINE_BYTES = {"flat": 4, "fp16": 2, "sq8": 1, None: 0}


def pq_m(d: int, fast_scan: bool = False) -> int:
    """Sub-quantisers: m must divide d; ~8 dims each for 8-bit codes, ~2 dims for 4-bit fast-scan codes.

    At 1M x 512 (docs/bench_1m.md), nprobe 128: 2 dims per 4-bit code reached recall@10 0.982 (held out)
    with a 200-candidate shortlist at 2.9 ms CPU; 4 dims per code needed 800 candidates for 0.978 at
    2.6 ms. Same cost, the finer codes keep the margin; they add 64 B per vector to the 2 KiB re-rank store.
    """
    per = 2 if fast_scan else 8
    for m in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if d % m == 0 and m <= max(1, d // per):
            return m
    return 1


class _PqKind(IvfKind):
    """IVF with product-quantised codes and an optional refinement store."""

    search_params = ("nprobe", "k_factor")
    fast_scan = False

    def code_bits(self, params: dict) -> int:
        return int(params["nbits"])

    def codes(self, quantizer: faiss.Index, d: int, params: dict) -> faiss.Index:
        raise NotImplementedError

    def lists(self, quantizer: faiss.Index, d: int, params: dict):
        p = params
        p["m"] = int(p["m"] or pq_m(d, fast_scan=self.fast_scan))
        if d % p["m"]:
            raise UsageError(f"{self.name}: m={p['m']} must divide the dimension {d}")
        if p["refine"] not in REFINE_BYTES:
            raise UsageError(f"{self.name}: refine={p['refine']!r}; choose from {list(REFINE_BYTES)}")
        ivf = self.codes(quantizer, d, p)
        if not p["refine"]:
            return ivf, ivf
        if p["refine"] == "flat":
            refine = faiss.IndexRefineFlat(ivf)  # re-ranks the shortlist with the exact vectors
        else:
            qt = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}[p["refine"]]
            refine = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(d, qt, faiss.METRIC_INNER_PRODUCT))
        refine.k_factor = float(p["k_factor"])
        return ivf, faiss.IndexIDMap2(refine)

    def memory(self, n: int, d: int, params: dict) -> int:
        m = params["m"] or pq_m(d, fast_scan=self.fast_scan)
        code = m * self.code_bits(params) // 8
        # ids: 8 B in the lists, plus IndexIDMap2's map for a refined index (measured: docs/design_notes.md)
        ids = 8 + (112 if params["refine"] else 0)
        return n * (code + REFINE_BYTES[params["refine"]] * d + ids)  # PQ codes + refine store + ids

    def min_train_vectors(self, params: dict) -> tuple[int, str]:
        """One per coarse list, and one per codebook centroid (2**bits per sub-space; faiss aborts below)."""
        centroids = 2 ** self.code_bits(params)
        if centroids >= int(params["nlist"]):
            return centroids, f"its product-quantiser codebooks have {centroids} centroids each"
        return super().min_train_vectors(params)

    def set_search_param(self, index: faiss.Index, params: dict, name: str, value) -> None:
        if name == "k_factor":
            if params.get("refine"):
                faiss.downcast_index(index.index).k_factor = float(value)
        else:
            super().set_search_param(index, params, name, value)


@INDEX_KINDS.register("ivf_pq")
class IvfPq(_PqKind):
    """IVF with 8-bit PQ codes, the shortlist re-ranked by an fp16 / sq8 / exact store (or none)."""

    options = (Option("nlist", int, None, help="coarse lists (default ≈ 4 sqrt(n))"),
               Option("m", int, None, help="PQ sub-quantisers (default ≈ d / 8)"),
               Option("nbits", int, 8, help="bits per PQ code"),
               Option("nprobe", int, 32, help="lists scanned per query"),
               Option("k_factor", int, 8, help="shortlist size, times k, re-ranked by the refinement store"),
               Option("refine", str, "fp16", help="refinement store: flat, fp16, sq8 or None"))

    def codes(self, quantizer: faiss.Index, d: int, params: dict) -> faiss.Index:
        return faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["m"], int(params["nbits"]),
                                faiss.METRIC_INNER_PRODUCT)


@INDEX_KINDS.register("ivf_pqfs")
class IvfPqFastScan(_PqKind):
    """IVF with 4-bit fast-scan PQ codes, the shortlist re-ranked with the exact vectors."""

    options = (Option("nlist", int, None, help="coarse lists (default ≈ 2 sqrt(n))"),
               Option("m", int, None, help="PQ sub-quantisers (default ≈ d / 2)"),
               Option("nprobe", int, None, help="lists scanned per query (default nlist / 16)"),
               Option("k_factor", int, 20, help="shortlist size, times k, re-ranked with the exact vectors"),
               Option("refine", str, "flat", help="refinement store: flat, fp16, sq8 or None"),
               Option("quantizer", str, None, help="coarse quantiser: flat or hnsw (default hnsw from 8192 lists)"))
    fast_scan = True
    lists_per_sqrt = 2

    def code_bits(self, params: dict) -> int:
        return 4

    def size_coarse(self, params: dict) -> None:
        p = params
        p["quantizer"] = p["quantizer"] or ("hnsw" if p["nlist"] >= HNSW_QUANTIZER_FROM else "flat")
        if p["quantizer"] not in ("flat", "hnsw"):
            raise UsageError(f"ivf_pqfs: quantizer={p['quantizer']!r}; choose from ['flat', 'hnsw']")
        p["nprobe"] = int(p["nprobe"] or nprobe_for(p["nlist"]))

    def codes(self, quantizer: faiss.Index, d: int, params: dict) -> faiss.Index:
        # 4-bit codes scanned with SIMD shuffles (faiss "fast scan"), 32 codes at a time
        return faiss.IndexIVFPQFastScan(quantizer, d, params["nlist"], params["m"], 4, faiss.METRIC_INNER_PRODUCT)
