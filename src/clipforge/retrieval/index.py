"""faiss behind one numpy contract: `scores, ids = index.search(q, k)`.

q is float32 (n, d) of unit rows; scores are inner products (= cosine) float32 (n, k), ids are the
collection's own int64 ids, padded with -1 (score -inf) when fewer than k live vectors exist.

Kinds and how they hold ids / forget vectors:
  flat      IndexIDMap2(IndexFlatIP)           exact; remove_ids is native
  hnsw      IndexIDMap2(IndexHNSWFlat)         M, efConstruction, efSearch; HNSW cannot delete, so a removed
                                               vector's id_map entry becomes -1 and search skips it
  ivf_flat  IndexIVFFlat (ids stored natively) nlist, nprobe; remove_ids is native
  ivf_pq    IndexIDMap2(IndexRefine(IVFPQ, flat|fp16|sq8 store)) or a plain IVFPQ (refine=None, ids
                                               native)  nlist, m, nbits, nprobe, k_factor, refine; a refined
                                               index removes by -1 marking as for hnsw
  ivf_pqfs  IndexIDMap2(IndexRefineFlat(IVFPQFastScan)): 4-bit PQ codes scanned with SIMD ("fast scan"),
                                               the shortlist (k * k_factor) re-ranked with the exact vectors,
                                               so returned scores are exact inner products; an HNSW graph over
                                               the centroids as coarse quantiser from 8192 lists. nlist, m,
                                               nprobe, k_factor, refine, quantizer

Saved as one file (a small JSON header, then faiss's own serialisation), written atomically. IVF indexes
merged with their lists on disk (clipforge.retrieval.sharded) add a faiss file and an .ivfdata file beside it.
"""

from __future__ import annotations

import json
import math
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from clipforge.atomic import atomic_write, atomic_write_path
from clipforge.errors import ClipforgeError, UsageError

KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq", "ivf_pqfs")
EXACT_THRESHOLD = 200_000  # below this many vectors exact search is fast enough (≈ 30 ms/query at 512-d)
INDEX_MAGIC = _MAGIC = b"CFINDEX1"  # first bytes of every index file clipforge writes
_DEFAULTS = {
    "flat": {},
    "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 128},
    "ivf_flat": {"nlist": None, "nprobe": 32},
    "ivf_pq": {"nlist": None, "m": None, "nbits": 8, "nprobe": 32, "k_factor": 8, "refine": "fp16"},
    "ivf_pqfs": {"nlist": None, "m": None, "nprobe": None, "k_factor": 20, "refine": "flat", "quantizer": None},
}
# Bytes per dimension of the IVF-PQ refinement store (re-scores the PQ shortlist with better vectors).
_REFINE_BYTES = {"flat": 4, "fp16": 2, "sq8": 1, None: 0}

# faiss chooses between a SIMD scan and BLAS for exact (flat) distances via the global
# distance_compute_blas_threshold; this build ships 128000, so BLAS never runs for realistic batches.
# Measured here (one thread, 50k-200k x 512): a single query is 3x faster without BLAS (4.7 vs 15 ms at
# 50k), from 4 queries on BLAS wins (1.2 vs 4.8 ms/query at 16, 0.7 vs 5 at 64). search() sets it per call.
_BLAS_FROM_NQ = 4


@contextmanager
def _omp_threads(n: int):
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _set_blas_for(nq: int) -> None:
    # a global: concurrent searches may race on it, which changes speed only, never results
    faiss.cvar.distance_compute_blas_threshold = 1 if nq >= _BLAS_FROM_NQ else 1 << 30


def _nlist_for(n: int, kind: str = "ivf_flat") -> int:
    # ≈ 4 sqrt(n) lists (2 sqrt(n) for ivf_pqfs: 2048 at 1M, measured in docs/bench_1m.md), a power of
    # two, with ≥ 39 training points per list (faiss's own floor).
    per = 2 if kind == "ivf_pqfs" else 4
    return int(max(1, min(2 ** round(math.log2(max(1.0, per * math.sqrt(n)))), n // 39)))


def _nprobe_for(nlist: int) -> int:
    # ivf_pqfs at 1M x 512 (embedding-shaped): nprobe 128 of 2048 lists with k_factor 20 gave recall@10
    # 0.982 (96: 0.975, 192: 0.994); build_faiss still tunes nprobe to the target on the real vectors
    return max(1, nlist // 16)


def _train_size_for(nlist: int) -> int:
    """k-means sample: 100k rows, or 40 per list when there are more lists (faiss warns under 39)."""
    return max(100_000, 40 * nlist)


# k-means iterations for the coarse quantiser (faiss's default is 25; 10 reaches the same recall here
# at 40% of the training time, which dominates IVF builds on few cores)
_KMEANS_NITER = 10
# from this many lists the coarse quantiser is an HNSW graph over the centroids (a walk instead of a scan
# over all centroids). Below it a flat scan wins: at 2048 lists, 200k x 512, the flat quantiser added
# vectors 4x faster (one BLAS product per batch vs a graph walk per vector at efSearch = 2 nprobe) and
# searched faster, with the same recall
_HNSW_QUANTIZER_FROM = 8192


def _set_nprobe(ivf, nprobe: int) -> None:
    ivf.nprobe = nprobe
    q = faiss.downcast_index(ivf.quantizer)
    if isinstance(q, faiss.IndexHNSW):  # the graph must find nprobe good lists, not just nprobe lists
        q.hnsw.efSearch = 2 * nprobe


def min_train_vectors(kind: str, params: dict) -> tuple[int, str]:
    """The fewest training vectors an IVF index of this kind accepts, and why: one per coarse list, and
    for the PQ kinds one per codebook centroid (2**nbits per sub-space; faiss aborts below that)."""
    nlist = int(params["nlist"])
    if kind == "ivf_flat":
        return nlist, f"one per list, nlist={nlist}"
    centroids = 2 ** (4 if kind == "ivf_pqfs" else int(params["nbits"]))
    if centroids >= nlist:
        return centroids, f"its product-quantiser codebooks have {centroids} centroids each"
    return nlist, f"one per list, nlist={nlist}"


def _check_vectors(x, d: int | None, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        raise UsageError(f"{what}: expected float32 (n, {d or 'd'}), got shape {x.shape}")
    return x


def header_bytes(magic: bytes, header: dict) -> bytes:
    """The start of every clipforge index file: 8 magic bytes, the JSON header's length, the header."""
    data = json.dumps(header).encode()
    return magic + struct.pack("<Q", len(data)) + data


def read_header(f, magic: bytes) -> dict | None:
    """The JSON header of a file written with header_bytes(magic, ...), or None if the magic differs."""
    if f.read(len(magic)) != magic:
        return None
    (n,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(n))


@dataclass
class IndexSpec:
    """What choose_index decided, with the reason, so a manifest can record it."""
    kind: str
    params: dict = field(default_factory=dict)
    reason: str = ""


def estimate_memory(kind: str, n: int, d: int, params: dict | None = None) -> int:
    """Bytes an index of this kind holds for n vectors (the vector store dominates; ids are 8 B each)."""
    p = {**_DEFAULTS[kind], **(params or {})}
    if kind in ("flat", "ivf_flat"):
        return n * (4 * d + 8)
    if kind == "hnsw":
        return n * (4 * d + 8 + int(p["M"] * 2 * 4 * 1.1))  # level-0 has 2M links of 4 B, upper levels ~10%
    fast = kind == "ivf_pqfs"
    m = p["m"] or _pq_m(d, fast_scan=fast)
    code = m * (4 if fast else p["nbits"]) // 8
    # ids: 8 B in the lists; a refined index maps rows to ids in IndexIDMap2 (a vector + a hash map):
    # ivf_pqfs at 1M x 512 measured 2.30 GB resident against 2.18 GB of codes and vectors
    ids = 8 + (112 if p["refine"] else 0)
    return n * (code + _REFINE_BYTES[p["refine"]] * d + ids)  # PQ codes + refine store + ids


def _pq_m(d: int, fast_scan: bool = False) -> int:
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


def choose_index(n: int, d: int, max_memory_bytes: int | None = None,
                 exact_threshold: int = EXACT_THRESHOLD) -> IndexSpec:
    """Pick an index kind from collection size and a memory budget (None = unlimited).

    Measured on embedding-shaped vectors on a 2-core AVX2 machine (docs/bench_index.md, docs/bench_1m.md):
      - exact below exact_threshold when it fits (100k x 512: 12 ms per query, recall 1);
      - then ivf_pqfs: IVF (a flat coarse quantiser up to 8192 lists), 4-bit fast-scan PQ (2 dims per code) and exact
        re-ranking. At 1M x 512 (nprobe 128 of 2048, k_factor 20) it reached recall@10 0.982 on held-out
        queries at 2.9 ms of CPU per query and built in 158 CPU-seconds, while HNSW32 (faiss defaults,
        also what autofaiss picks) needed efSearch 384 (5.1 ms) for 0.98 and 4-6x the build CPU;
        HNSW stays available by name;
      - IVF-Flat when only the raw vectors fit; IVF-PQ with a smaller refinement store (fp16, sq8) or
        none as the last resort.
    """
    budget = math.inf if max_memory_bytes is None else max_memory_bytes
    fits = {k: estimate_memory(k, n, d) <= budget for k in KINDS}
    if n <= exact_threshold and fits["flat"]:
        return IndexSpec("flat", {}, f"{n} vectors <= exact threshold {exact_threshold}")
    if fits["ivf_pqfs"]:
        nlist = _nlist_for(n, "ivf_pqfs")
        p = {"nlist": nlist, "m": _pq_m(d, fast_scan=True), "nprobe": _nprobe_for(nlist), "k_factor": 20,
             "refine": "flat", "quantizer": None}
        return IndexSpec("ivf_pqfs", p, f"{n} vectors > {exact_threshold}: IVF + fast-scan PQ + exact re-ranking "
                                        "(measured best recall/latency/build at 1M)")
    if fits["ivf_flat"]:
        return IndexSpec("ivf_flat", {"nlist": _nlist_for(n), "nprobe": 32}, "only the raw vectors fit the budget")
    for refine in ("fp16", "sq8", None):
        p = {"nlist": _nlist_for(n), "m": _pq_m(d), "nbits": 8, "nprobe": 32, "k_factor": 8, "refine": refine}
        if estimate_memory("ivf_pq", n, d, p) <= budget:
            return IndexSpec("ivf_pq", p, f"only compressed codes fit the budget (refine={refine})")
    raise ClipforgeError(f"{n} x {d} vectors need at least {estimate_memory('ivf_pq', n, d, {'refine': None}) / 2**30:.2f} GiB "
                         f"(IVF-PQ); the memory budget is {budget / 2**30:.2f} GiB")


class VectorIndex:
    """A faiss index holding the collection's ids. Build with `VectorIndex.build(x, ids, kind, **params)`."""

    def __init__(self, index: faiss.Index, kind: str, params: dict, info: dict | None = None):
        self.index, self.kind, self.params = index, kind, params
        self.info = dict(info or {})  # free-form facts worth saving, e.g. measured recall
        self._n_live: int | None = None  # cached: counting live ids copies the whole id map (8 B/vector)

    # -- construction --
    @classmethod
    def create(cls, d: int, kind: str = "flat", n: int = 0, **params) -> "VectorIndex":
        """An empty index; IVF kinds still need train(). n: the collection size it is meant for, which sizes
        the defaults (nlist, m). Unknown params raise."""
        if kind not in KINDS:
            raise UsageError(f"index kind {kind!r}: choose from {list(KINDS)}")
        unknown = set(params) - set(_DEFAULTS[kind])
        if unknown:
            raise UsageError(f"{kind} index: unknown parameter(s) {sorted(unknown)}; valid: "
                             f"{sorted(_DEFAULTS[kind])}")
        p = {**_DEFAULTS[kind], **params}
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(d)), kind, p)
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(d, int(p["M"]), ip)
            inner.hnsw.efConstruction = int(p["efConstruction"])
            inner.hnsw.efSearch = int(p["efSearch"])
            return cls(faiss.IndexIDMap2(inner), kind, p)
        p["nlist"] = int(p["nlist"] or _nlist_for(n, kind))
        if kind == "ivf_pqfs":
            p["quantizer"] = p["quantizer"] or ("hnsw" if p["nlist"] >= _HNSW_QUANTIZER_FROM else "flat")
            if p["quantizer"] not in ("flat", "hnsw"):
                raise UsageError(f"ivf_pqfs: quantizer={p['quantizer']!r}; choose from ['flat', 'hnsw']")
            p["nprobe"] = int(p["nprobe"] or _nprobe_for(p["nlist"]))
        quantizer = faiss.IndexHNSWFlat(d, 32, ip) if p.get("quantizer") == "hnsw" else faiss.IndexFlatIP(d)
        if kind == "ivf_flat":
            index = ivf = faiss.IndexIVFFlat(quantizer, d, p["nlist"], ip)  # stores the collection ids itself
        else:
            p["m"] = int(p["m"] or _pq_m(d, fast_scan=kind == "ivf_pqfs"))
            if d % p["m"]:
                raise UsageError(f"{kind}: m={p['m']} must divide the dimension {d}")
            if p["refine"] not in _REFINE_BYTES:
                raise UsageError(f"{kind}: refine={p['refine']!r}; choose from {list(_REFINE_BYTES)}")
            if kind == "ivf_pq":
                ivf = faiss.IndexIVFPQ(quantizer, d, p["nlist"], p["m"], int(p["nbits"]), ip)
            else:  # 4-bit codes scanned with SIMD shuffles (faiss "fast scan"), 32 codes at a time
                ivf = faiss.IndexIVFPQFastScan(quantizer, d, p["nlist"], p["m"], 4, ip)
            if p["refine"] == "flat":
                refine = faiss.IndexRefineFlat(ivf)  # re-ranks the shortlist with the exact vectors
            elif p["refine"]:
                qt = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}[p["refine"]]
                refine = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(d, qt, ip))
            # a refined index cannot take ids itself: IndexIDMap2 maps its row numbers to ours; a plain
            # IVF stores our ids in its lists (so its lists alone can be merged, even on disk)
            index = faiss.IndexIDMap2(refine) if p["refine"] else ivf
            if p["refine"]:
                refine.k_factor = float(p["k_factor"])
        # (faiss's python wrappers keep the quantiser / sub-indexes alive via referenced_objects)
        _set_nprobe(ivf, int(p["nprobe"]))
        return cls(index, kind, p)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, sample: np.ndarray, seed: int = 0) -> None:
        """Train the coarse quantiser (and PQ codebooks) on sample rows; a no-op for flat / hnsw.

        Sharded builds train once, save the empty trained index, and every shard starts from that file.
        """
        if self.is_trained:
            return
        sample = _check_vectors(sample, self.d, "train")
        nlist = self.params["nlist"]
        need, why = min_train_vectors(self.kind, self.params)
        if len(sample) < need:
            raise UsageError(f"{self.kind} index: needs at least {need} vectors to train ({why}), got "
                             f"{len(sample)}; for a collection this small choose `index_kind` flat (exact "
                             f"search) or auto")
        ivf = faiss.extract_index_ivf(self.index)
        # 1. the coarse k-means, all threads (BLAS on the whole sample); spherical, as faiss does for IP
        _set_blas_for(len(sample))
        km = faiss.Kmeans(self.d, nlist, niter=_KMEANS_NITER, seed=seed, spherical=True,
                          max_points_per_centroid=len(sample))  # the caller chose the sample size
        km.train(sample)
        ivf.quantizer.add(km.centroids)  # a filled quantiser counts as trained: faiss skips its k-means
        # 2. the codebooks (PQ: one tiny k-means per sub-space) on ONE thread: faiss runs these with
        # OpenMP barriers that stall whenever another process holds a core (measured on this 2-core
        # machine under load: 76 s with 2 threads, 1.6 s with 1 for 128 sub-quantisers on 30k rows)
        with _omp_threads(1):
            self.index.train(sample)

    @classmethod
    def build(cls, x: np.ndarray, ids: np.ndarray | None = None, kind: str = "flat",
              train_size: int | None = None, seed: int = 0, **params) -> "VectorIndex":
        """x: (N, D) unit rows; ids: (N,) int64 (default 0..N-1). Unknown params raise.

        IVF kinds train on a random sample of train_size rows (default: enough for the k-means, see
        _train_size_for)."""
        x = _check_vectors(x, None, "build")
        n, d = x.shape
        self = cls.create(d, kind, n, **params)
        if not self.is_trained:
            size = train_size or _train_size_for(self.params["nlist"])
            self.train(x if n <= size else x[np.random.default_rng(seed).choice(n, size, replace=False)], seed)
        if n:
            self.add(x, np.arange(n, dtype=np.int64) if ids is None else ids)
        return self

    # -- facts --
    @property
    def d(self) -> int:
        return self.index.d

    def _inner(self):
        return faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap2) else None

    def _id_map(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map)

    def _marks_removed(self) -> bool:
        """Graph and refined indexes cannot delete rows: their id map marks removed ones -1 instead."""
        return isinstance(self.index, faiss.IndexIDMap2) and self.kind != "flat"

    def ids(self) -> np.ndarray:
        """(N,) int64: the live ids, in storage order."""
        if isinstance(self.index, faiss.IndexIDMap2):
            m = self._id_map()
            return m[m >= 0]
        invl = faiss.extract_index_ivf(self.index).invlists  # ids stored in the inverted lists
        out = [faiss.rev_swig_ptr(invl.get_ids(i), invl.list_size(i)).copy()
               for i in range(invl.nlist) if invl.list_size(i)]
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    def __len__(self) -> int:
        """Live vectors."""
        if not self._marks_removed():
            return int(self.index.ntotal)
        if self._n_live is None:
            self._n_live = int(np.count_nonzero(self._id_map() >= 0))
        return self._n_live

    def _contents_changed(self) -> None:
        """Call after changing the faiss index's rows or id map directly."""
        self._n_live = None

    @property
    def n_dead(self) -> int:
        """Removed vectors still occupying an hnsw / ivf_pq / ivf_pqfs index (rebuild when this grows large)."""
        return int(self.index.ntotal) - len(self)

    @property
    def needs_rebuild(self) -> bool:
        """True when removed-but-present vectors exceed 20%: every search over-fetches by n_dead."""
        return self.n_dead > 0.2 * max(1, int(self.index.ntotal))

    def set_search_params(self, **params) -> None:
        """efSearch (hnsw), nprobe / k_factor (ivf kinds)."""
        valid = {"hnsw": ("efSearch",), "ivf_flat": ("nprobe",), "ivf_pq": ("nprobe", "k_factor"),
                 "ivf_pqfs": ("nprobe", "k_factor")}.get(self.kind, ())
        for k, v in params.items():
            if k not in valid:
                raise UsageError(f"{self.kind} index: search parameter {k!r} unknown; valid: {list(valid)}")
            self.params[k] = v
            if k == "efSearch":
                self._inner().hnsw.efSearch = int(v)
            elif k == "k_factor" and self.params.get("refine"):
                self._inner().k_factor = float(v)
            elif k == "nprobe":
                _set_nprobe(faiss.extract_index_ivf(self.index), int(v))

    # -- updates --
    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Upsert: ids already present are replaced by the new vectors."""
        x = _check_vectors(x, self.d, "add")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (len(x),) or len(np.unique(ids)) != len(ids) or (ids < 0).any():
            raise UsageError("add: ids must be unique non-negative int64, one per vector")
        self.remove(ids)
        _set_blas_for(len(x))  # the coarse assignment of a batch is a matrix product
        self.index.add_with_ids(x, ids)
        self._contents_changed()

    def remove(self, ids) -> int:
        """Forget these ids (absent ones are ignored); returns how many were present."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids) or not self.index.ntotal:
            return 0
        if not self._marks_removed():
            return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        # Graph / refine indexes cannot delete: point the slot's id at -1, which search skips.
        id_map = self._id_map()
        hit = np.isin(id_map, ids)
        if hit.any():
            id_map[hit] = -1
            faiss.copy_array_to_vector(id_map, self.index.id_map)
            self.index.construct_rev_map()
            self._contents_changed()
        return int(hit.sum())

    # -- search --
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (n, d) -> scores float32 (n, k), ids int64 (n, k); -1 / -inf where fewer than k live vectors."""
        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        q = _check_vectors(q, self.d, "search")
        dead = self.n_dead
        fetch = min(k + dead, self.index.ntotal) if dead else min(k, self.index.ntotal)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out = np.full((len(q), k), -1, dtype=np.int64)
        if fetch == 0 or len(q) == 0:
            return scores, out
        _set_blas_for(len(q))
        # faiss parallelises over queries: a parallel region for fewer queries than threads only waits at its
        # barrier (nq=1 on 22 vectors, 2 threads: 1.1 ms of CPU and 4 ms of wall time on a busy 2-core
        # machine, vs 0.05 ms with one thread), so a search never asks for more threads than queries
        with _omp_threads(max(1, min(len(q), faiss.omp_get_max_threads()))):
            s, i = self.index.search(q, fetch)
        if not dead:
            scores[:, :fetch], out[:, :fetch] = s, i
            out[out < 0] = -1
            scores[out < 0] = -np.inf
            return scores, out
        for r in range(len(q)):  # compact away dead slots (id -1), keep rank order
            keep = i[r] >= 0
            n = min(k, int(keep.sum()))
            scores[r, :n], out[r, :n] = s[r][keep][:n], i[r][keep][:n]
        return scores, out

    # -- persistence --
    def _on_disk_lists(self):
        """The OnDiskInvertedLists of an IVF index merged on disk, else None."""
        if self.kind not in ("ivf_flat", "ivf_pq", "ivf_pqfs"):
            return None
        invl = faiss.downcast_InvertedLists(faiss.extract_index_ivf(self.index).invlists)
        return invl if isinstance(invl, faiss.OnDiskInvertedLists) else None

    def save(self, path) -> None:
        """One file: magic, header length, JSON header (kind, params, info), then faiss's serialisation.

        An index whose inverted lists live on disk (sharded.merge_shards(on_disk=True)) is saved in the
        directory of its `.ivfdata` file as the header file plus a plain faiss file that names the lists by
        base name; the header, written last, is the commit point.
        """
        path = Path(path)
        head = {"kind": self.kind, "params": self.params, "info": self.info}
        odl = self._on_disk_lists()
        if odl is not None:
            data = Path(odl.filename)
            if data.parent.resolve() != path.parent.resolve():
                raise UsageError(f"an on-disk index is saved beside its lists file {data}: choose a path in "
                                 f"{data.parent}")
            old = self._faiss_files(path)
            head["faiss_file"] = f"{path.name}.{time.time_ns():x}.faiss"
            head["ivfdata"] = data.name
            atomic_write_path(path.parent / head["faiss_file"], lambda tmp: faiss.write_index(self.index, tmp))
        def write(f) -> None:
            f.write(header_bytes(_MAGIC, head))
            if odl is None:
                writer = faiss.PyCallbackIOWriter(f.write)
                faiss.write_index(self.index, writer)
                del writer

        atomic_write(path, write)
        if odl is not None:  # files of the previous save at this path, no longer named by the header
            for name in old - {head["faiss_file"], head["ivfdata"]}:
                (path.parent / name).unlink(missing_ok=True)

    @staticmethod
    def _faiss_files(path: Path) -> set:
        """Side files an on-disk index saved at path refers to now (empty for a one-file index)."""
        try:
            with open(path, "rb") as f:
                h = read_header(f, _MAGIC) or {}
        except (OSError, ValueError, struct.error):
            return set()
        return {h[k] for k in ("faiss_file", "ivfdata") if k in h}

    @classmethod
    def load(cls, path) -> "VectorIndex":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                header = read_header(f, _MAGIC)
                if header is None:
                    raise ClipforgeError(f"{path}: not a clipforge index file")
                if "faiss_file" in header:  # lists on disk: faiss finds .ivfdata in the faiss file's directory
                    index = faiss.read_index(str(path.parent / header["faiss_file"]), faiss.IO_FLAG_ONDISK_SAME_DIR)
                else:
                    index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
        except (OSError, RuntimeError, ValueError, struct.error) as e:
            raise ClipforgeError(f"{path}: cannot read index ({e})") from e
        return cls(index, header["kind"], header["params"], header.get("info"))

    def export_faiss(self, path) -> None:
        """Plain faiss file (faiss.read_index / autofaiss users); our header is not included."""
        faiss.write_index(self.index, str(path))


def synthetic_embeddings(n: int, d: int = 512, rank: int = 64, noise: float = 0.5, seed: int = 0,
                         n_queries: int = 0):
    """Embedding-shaped test data: a low-rank signal with a decaying spectrum plus isotropic noise, unit rows.

    Real CLIP embeddings concentrate in a few dozen directions; isotropic Gaussian vectors (noise only) are
    the worst case for approximate indexes. noise = noise-to-signal norm ratio. Returns xb (n, d) or, with
    n_queries, (xb, queries) drawn from the same distribution.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T.astype(np.float32)  # (rank, d) orthonormal
    spectrum = (1.0 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)  # (rank,)

    def draw(m: int) -> np.ndarray:
        z = rng.standard_normal((m, rank), dtype=np.float32) * spectrum  # (m, rank)
        signal = z @ basis  # (m, d)
        signal /= np.linalg.norm(signal, axis=1, keepdims=True)
        eps = rng.standard_normal((m, d), dtype=np.float32)
        eps *= noise / np.linalg.norm(eps, axis=1, keepdims=True)
        x = signal + eps
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    xb = draw(n)
    return (xb, draw(n_queries)) if n_queries else xb


def exact_knn(xb: np.ndarray, q: np.ndarray, k: int, ids: np.ndarray | None = None, block: int = 65536):
    """Brute-force ground truth with numpy (BLAS), independent of faiss: (scores (n, k), ids (n, k)).

    xb (N, D) may be a memory map: it is read in blocks of `block` rows, so N can exceed RAM. Equal scores
    rank by the smaller id (the rule the sharded searcher merges by); -1 / -inf pad rows when N < k.
    """
    q = _check_vectors(q, None, "exact_knn")
    n_total = len(xb)
    ids = np.arange(n_total, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), 0), -1, dtype=np.int64)
    for start in range(0, n_total, block):
        xs = np.ascontiguousarray(xb[start:start + block], dtype=np.float32)
        s = q @ xs.T  # (n, b)
        i = np.broadcast_to(ids[start:start + len(xs)], s.shape)
        if s.shape[1] > k:  # keep this block's top k before merging
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]  # (n, k), arbitrary among ties at the k-th
            kth = np.take_along_axis(s, part, 1).min(1, keepdims=True)
            for r in np.flatnonzero((s >= kth).sum(1) > k):  # rare (duplicate vectors): smaller ids win
                part[r] = np.lexsort((i[r], -s[r]))[:k]
            s, i = np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)
        best_s, best_i = merge_topk(np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1), k)
    return best_s, best_i


def merge_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k of each row of candidate (scores, ids) (n, m): descending score, ties by ascending id, -1 last."""
    n, m = scores.shape
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    big = np.where(ids < 0, np.iinfo(np.int64).max, ids)  # padding sorts after every real id
    order = np.lexsort((big, -scores), axis=1)[:, :k]  # primary key last: -score, then id
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    out_i = np.full((n, k), -1, dtype=np.int64)
    w = min(k, m)
    out_s[:, :w] = np.take_along_axis(scores, order, 1)
    out_i[:, :w] = np.take_along_axis(ids, order, 1)
    out_i[np.isneginf(out_s)] = -1
    return out_s, out_i


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |got ∩ truth| / |truth| (ids, -1 padding ignored)."""
    return float(np.mean([len(set(g[g >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum()))
                          for g, t in zip(got, truth)]))


def measure_recall(index: VectorIndex, xb: np.ndarray, queries: np.ndarray, k: int = 10,
                   ids: np.ndarray | None = None, record: bool = True, truth: np.ndarray | None = None) -> dict:
    """recall@k of `index` against exact search over xb (rows carrying `ids`), on sample queries.

    recall@k = mean over queries of |approx top-k ∩ exact top-k| / k. Also reports p50 latency of
    one-query searches (as a user's arrive) and the batched cost per query. Recorded into index.info
    when record=True. truth: precomputed exact top-k ids (n_queries, k), to skip the brute-force pass.
    """
    queries = _check_vectors(queries, index.d, "measure_recall")
    if truth is None:
        _, truth = exact_knn(xb, queries, k, ids)
    t0 = time.perf_counter()
    _, got = index.search(queries, k)
    batch_s = time.perf_counter() - t0
    lat = []
    for qi in queries[: min(len(queries), 100)]:
        t = time.perf_counter()
        index.search(qi[None], k)
        lat.append(time.perf_counter() - t)
    result = {f"recall@{k}": _recall(got, truth), "k": k, "n_queries": len(queries), "n": len(xb),
              "p50_ms": float(np.median(lat) * 1e3), "batch_ms_per_query": batch_s * 1e3 / len(queries),
              "kind": index.kind, "params": dict(index.params), "threads": faiss.omp_get_max_threads()}
    if record:
        index.info[f"recall@{k}"] = result
    return result


def tune_recall(index: VectorIndex, xb: np.ndarray, queries: np.ndarray, target: float = 0.95, k: int = 10,
                ids: np.ndarray | None = None) -> dict:
    """Smallest efSearch / nprobe whose measured recall@k reaches target (exhaustive if none does).

    Doubles the parameter until the target is met, then bisects between the last miss and the first hit:
    recall jumps steeply in these parameters, so doubling alone can overshoot the cost by ~2x.
    Returns (and records) measure_recall's figures at the chosen value.
    """
    queries = _check_vectors(queries, index.d, "tune_recall")
    _, truth = exact_knn(xb, queries, k, ids)
    if index.kind == "flat":
        return measure_recall(index, xb, queries, k, ids, truth=truth)
    name = "efSearch" if index.kind == "hnsw" else "nprobe"
    limit = len(xb) if name == "efSearch" else index.params["nlist"]

    def ok(v: int) -> bool:
        index.set_search_params(**{name: v})
        return _recall(index.search(queries, k)[1], truth) >= target

    lo, hi = 0, int(index.params[name])
    while not ok(hi) and hi < limit:
        lo, hi = hi, min(limit, 2 * hi)
    while hi - lo > max(1, hi // 16):  # bisect to within ~6% of the cheapest passing value
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    index.set_search_params(**{name: hi})
    return measure_recall(index, xb, queries, k, ids, truth=truth)
