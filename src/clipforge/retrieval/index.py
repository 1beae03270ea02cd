"""faiss behind one numpy contract: `scores, ids = index.search(q, k)`.

q is float32 (n, d) of unit rows; scores are inner products (= cosine) float32 (n, k), ids are the
collection's own int64 ids, padded with -1 (score -inf) when fewer than k live vectors exist.

`VectorIndex` holds one faiss index of a registered kind (`kinds/`: flat, hnsw, ivf_flat, ivf_pq, ivf_pqfs;
each declares its parameters and how it is built, trained, searched and forgets vectors). Which kind for a
collection: `index_choice`; the file format: `index_file`; measured recall: `recall`.
"""

from __future__ import annotations

import faiss
import numpy as np

from clipforge.errors import UsageError
from clipforge.retrieval.faiss_runtime import omp_threads, set_blas_for
from clipforge.retrieval.index_file import read_index_file, write_index_file
from clipforge.retrieval.kinds import index_kind

__all__ = ["VectorIndex", "check_vectors"]


def check_vectors(x, d: int | None, what: str) -> np.ndarray:
    """x as contiguous float32 (n, d) (any d when None); another shape is a one-line `UsageError`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        raise UsageError(f"{what}: expected float32 (n, {d or 'd'}), got shape {x.shape}")
    return x


class VectorIndex:
    """A faiss index holding the collection's ids. Build with `VectorIndex.build(x, ids, kind, **params)`."""

    def __init__(self, index: faiss.Index, kind: str, params: dict, info: dict | None = None):
        self.index, self.kind, self.params = index, kind, params
        self._kind = index_kind(kind)
        self.info = dict(info or {})  # free-form facts worth saving, e.g. measured recall
        self._n_live: int | None = None  # cached: counting live ids copies the whole id map (8 B/vector)

    # -- construction --
    @classmethod
    def create(cls, d: int, kind: str = "flat", n: int = 0, **params) -> "VectorIndex":
        """An empty index; IVF kinds still need train(). n: the collection size it is meant for, which sizes
        the defaults (nlist, m). Unknown params raise."""
        k = index_kind(kind)
        unknown = set(params) - set(k.defaults())
        if unknown:
            raise UsageError(f"{kind} index: unknown parameter(s) {sorted(unknown)}; valid: "
                             f"{sorted(k.defaults())}")
        p = {**k.defaults(), **params}
        return cls(k.create(d, n, p), kind, p)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, sample: np.ndarray, seed: int = 0) -> None:
        """Train the coarse quantiser (and PQ codebooks) on sample rows; a no-op for flat / hnsw.

        Sharded builds train once, save the empty trained index, and every shard starts from that file.
        """
        if self.is_trained:
            return
        self._kind.train(self.index, check_vectors(sample, self.d, "train"), self.params, seed)

    @classmethod
    def build(cls, x: np.ndarray, ids: np.ndarray | None = None, kind: str = "flat",
              train_size: int | None = None, seed: int = 0, **params) -> "VectorIndex":
        """x: (N, D) unit rows; ids: (N,) int64 (default 0..N-1). Unknown params raise.

        IVF kinds train on a random sample of train_size rows (default: enough for the k-means, see
        the kind's `train_size`)."""
        x = check_vectors(x, None, "build")
        n, d = x.shape
        self = cls.create(d, kind, n, **params)
        if not self.is_trained:
            size = train_size or self._kind.train_size(self.params)
            self.train(x if n <= size else x[np.random.default_rng(seed).choice(n, size, replace=False)], seed)
        if n:
            self.add(x, np.arange(n, dtype=np.int64) if ids is None else ids)
        return self

    # -- facts --
    @property
    def d(self) -> int:
        return self.index.d

    def _id_map(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map)

    def _marks_removed(self) -> bool:
        """Graph and refined indexes cannot delete rows: their id map marks removed ones -1 instead."""
        return self._kind.marks_removed(self.index)

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
        valid = self._kind.search_params
        for k, v in params.items():
            if k not in valid:
                raise UsageError(f"{self.kind} index: search parameter {k!r} unknown; valid: {list(valid)}")
            self.params[k] = v
            self._kind.set_search_param(self.index, self.params, k, v)

    # -- updates --
    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Upsert: ids already present are replaced by the new vectors."""
        x = check_vectors(x, self.d, "add")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (len(x),) or len(np.unique(ids)) != len(ids) or (ids < 0).any():
            raise UsageError("add: ids must be unique non-negative int64, one per vector")
        self.remove(ids)
        set_blas_for(len(x))  # the coarse assignment of a batch is a matrix product
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
        q = check_vectors(q, self.d, "search")
        dead = self.n_dead
        fetch = min(k + dead, self.index.ntotal) if dead else min(k, self.index.ntotal)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out = np.full((len(q), k), -1, dtype=np.int64)
        if fetch == 0 or len(q) == 0:
            return scores, out
        set_blas_for(len(q))
        # never more threads than queries: idle ones only wait at faiss's barrier (docs/design_notes.md)
        with omp_threads(max(1, min(len(q), faiss.omp_get_max_threads()))):
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
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is None:
            return None
        invl = faiss.downcast_InvertedLists(ivf.invlists)
        return invl if isinstance(invl, faiss.OnDiskInvertedLists) else None

    def save(self, path) -> None:
        """One file: magic, header length, JSON header (kind, params, info), then faiss's serialisation
        (`index_file`; an index whose lists live on disk is saved beside its `.ivfdata` file)."""
        write_index_file(path, self.index, {"kind": self.kind, "params": self.params, "info": self.info},
                         self._on_disk_lists())

    @classmethod
    def load(cls, path) -> "VectorIndex":
        index, header = read_index_file(path)
        return cls(index, header["kind"], header["params"], header.get("info"))

    def export_faiss(self, path) -> None:
        """Plain faiss file (faiss.read_index / autofaiss users); our header is not included."""
        faiss.write_index(self.index, str(path))
