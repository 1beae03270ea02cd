"""Sharded indexes: build parts of one index in separate processes or machines, then merge them.

    template = train_template(sample, "ivf_pqfs", n=N)      # once: an empty index, trained
    template.save("trained.cfidx")
    shard = build_shard("trained.cfidx", x_part, ids_part)   # anywhere, in parallel; vectors never meet
    shard.save(f"shard-{i}.cfidx")
    index = merge_shards(["shard-0.cfidx", ...], "merged.cfidx")   # one index, or shards searched as one

Every shard starts from the same trained file, so IVF shards share one coarse quantiser and codebooks and
their inverted lists concatenate: the merged index is the index one process would have built from that
training (same lists, same codes). HNSW graphs cannot be joined; `flat` and `hnsw` shards (or any kind, with
mode="query") are kept as separate files and searched by `ShardedIndex`, which asks every shard for its top
k and merges by score, equal scores ranked by the smaller id — for exact shards, the same results as one
exact index. `on_disk=True` (IVF kinds with codes only in the inverted lists) streams the shards' lists into
one `.ivfdata` file that search memory-maps, so the merged index need not fit in RAM.

All of it honours the index contract: `scores, ids = index.search(q, k)`, int64 collection ids, -1 padding.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from clipforge.atomic import atomic_write
from clipforge.errors import ClipforgeError, UsageError
from clipforge.output_dirs import OutputFile, file_starts_with
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.index_choice import choose_index
from clipforge.retrieval.index_file import INDEX_MAGIC, header_bytes, read_header
from clipforge.retrieval.kinds import index_kind
from clipforge.retrieval.topk import merge_topk
from clipforge.retrieval.store import EmbeddingStore

_SHARDS_MAGIC = b"CFSHARD1"
MODES = ("auto", "single", "query")


def train_template(sample: np.ndarray, kind: str, n: int, seed: int = 0, **params) -> VectorIndex:
    """The shared starting point of every shard: an empty index of `kind`, trained on sample rows.

    n: the size of the whole collection (sizes nlist and friends, as VectorIndex.build would for n rows).
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if sample.ndim != 2 or not len(sample):
        raise UsageError(f"train_template: sample must be a non-empty (n, d) array, got shape {sample.shape}")
    t = VectorIndex.create(sample.shape[1], kind, max(n, len(sample)), **params)
    t.train(sample, seed)
    t.info["template"] = {"id": uuid.uuid4().hex, "n_planned": int(n), "train_rows": len(sample)}
    return t


def _copy(index: VectorIndex) -> VectorIndex:
    return VectorIndex(faiss.deserialize_index(faiss.serialize_index(index.index)), index.kind,
                       dict(index.params), json.loads(json.dumps(index.info)))


def build_shard(template: VectorIndex | str | os.PathLike, x: np.ndarray, ids: np.ndarray) -> VectorIndex:
    """A shard: a copy of the trained template holding these vectors (ids: the collection's own, unique
    across all shards)."""
    t = VectorIndex.load(template) if isinstance(template, (str, os.PathLike)) else _copy(template)
    if "template" not in t.info:
        raise UsageError("build_shard: template is not a trained template (make one with train_template)")
    if t.index.ntotal:
        raise UsageError(f"build_shard: the template already holds {t.index.ntotal} vectors; it must be empty")
    t.add(x, ids)
    t.info["shard_rows"] = len(ids)
    return t


# ---- from an embedding store (an index directory or a clip-retrieval embeddings folder) -----------------

def parse_part(part: str) -> tuple[int, int]:
    """'2/8' -> (2, 8): this worker builds the store shards at positions p with p % 8 == 2."""
    try:
        i, n = (int(v) for v in str(part).split("/"))
    except ValueError:
        raise UsageError(f"part {part!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UsageError(f"part {part!r}: need 0 <= I < N")
    return i, n


def train_template_from_store(store_dir, kind: str = "auto", sample: int = 100_000,
                              max_memory: int | None = None, seed: int = 0, **params) -> VectorIndex:
    """train_template on a uniform random sample of a store's live vectors, read one store shard at a time.

    kind "auto": what choose_index picks for the whole store's size under max_memory (bytes).
    """
    store = EmbeddingStore.open(store_dir)
    n, d = len(store), store.dim
    if not n:
        raise UsageError(f"{store_dir}: the store holds no vectors")
    if kind == "auto":
        spec = choose_index(n, d, max_memory)
        kind, params = spec.kind, {**spec.params, **params}
    keep = np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False))  # global rows
    rows, start = [], 0
    for x, _ in store.iter_shards():
        pick = keep[(keep >= start) & (keep < start + len(x))] - start
        rows.append(x[pick])
        start += len(x)
    t = train_template(np.concatenate(rows), kind, n, seed, **params)
    t.info["template"]["store"] = str(store_dir)
    return t


def build_shard_from_store(store_dir, template, part: str | tuple[int, int]) -> VectorIndex:
    """The shard of worker I of N: the store shards at positions p % N == I, added to the template."""
    i, n_parts = parse_part(part) if isinstance(part, str) else part
    store = EmbeddingStore.open(store_dir)
    positions = [p for p in range(len(store.manifest["shards"])) if p % n_parts == i]
    shard = build_shard(template, np.zeros((0, store.dim), np.float32), np.zeros(0, np.int64))
    for x, ids in store.iter_shards(positions=positions):  # one store shard in memory at a time
        shard.add(x, ids)
    shard.info["part"] = f"{i}/{n_parts}"
    shard.info["shard_rows"] = len(shard)
    return shard


# ---- merging ------------------------------------------------------------------------------------------

def _merge_into(base: VectorIndex, other: VectorIndex) -> None:
    """Append other's vectors to base (same template); other is emptied."""
    index_kind(base.kind).merge(base.index, other.index)
    base._contents_changed()
    other._contents_changed()


def _check_compatible(shards: Sequence[VectorIndex], names: Sequence[str]) -> None:
    first = shards[0]
    tid = first.info.get("template", {}).get("id")
    for s, name in zip(shards, names):
        if s.kind != first.kind or s.d != first.d:
            raise UsageError(f"merge: {name} is a {s.kind} index of dim {s.d}, {names[0]} a {first.kind} "
                             f"of dim {first.d}")
        if index_kind(first.kind).shared_training and s.info.get("template", {}).get("id") != tid:
            raise UsageError(f"merge: {name} was not built from the same trained template as {names[0]} "
                             "(IVF shards must share one coarse quantiser)")
    seen = np.concatenate([s.ids() for s in shards])
    uniq, counts = np.unique(seen, return_counts=True)
    if len(uniq) != len(seen):
        dup = uniq[counts > 1]
        raise UsageError(f"merge: {len(dup)} id(s) occur in more than one shard, e.g. {dup[:5].tolist()}")


def vet_index_file(path, *, overwrite: bool = False, param: str = "out") -> Path:
    """Check that an index file (a template, a shard, a merged index or manifest) may be written at `path`:
    an earlier clipforge index file is replaced; another file only with `overwrite`; a folder, link, device or
    FIFO never (`output_dirs`). Call it before the work that produces the file."""
    output = OutputFile(overwrite=overwrite, param=param, owned=file_starts_with(INDEX_MAGIC, _SHARDS_MAGIC))
    return output.vet(path)[0]


def merge_shards(shards: Sequence[str | os.PathLike | VectorIndex], out=None, mode: str = "auto",
                 on_disk: bool = False, search_params: dict | None = None) -> "VectorIndex | ShardedIndex":
    """Merge shards built from one template into one searchable index, saved at `out` when given.

    mode: "single" = one index (flat and IVF kinds); "query" = keep the shards, search them as one
    (`ShardedIndex`; the manifest at `out` names the shard files, which stay where they are); "auto" =
    single where the kind allows, query for hnsw. on_disk (single, IVF kinds without a refinement store):
    the inverted lists go to an `.ivfdata` file beside `out`, built one shard at a time. search_params
    (efSearch, nprobe, k_factor) are set before saving.
    """
    if mode not in MODES:
        raise UsageError(f"merge mode {mode!r}: choose from {list(MODES)}")
    if not shards:
        raise UsageError("merge: no shards given")
    names = [str(s) if not isinstance(s, VectorIndex) else f"shard {i}" for i, s in enumerate(shards)]
    loaded = [VectorIndex.load(s) if not isinstance(s, VectorIndex) else s for s in shards]
    _check_compatible(loaded, names)
    refusal = index_kind(loaded[0].kind).merge_refusal
    if mode == "auto":
        mode = "query" if refusal else "single"
    if mode == "single" and refusal:
        raise UsageError(f"merge: {refusal}")
    if on_disk:
        if mode != "single" or out is None:
            raise UsageError("merge: on_disk needs mode 'single' (or 'auto') and an output path")
        return _merge_on_disk(loaded, Path(out), search_params)
    if mode == "query":
        result = ShardedIndex(loaded, [None if isinstance(s, VectorIndex) else Path(s) for s in shards])
    else:
        # merging empties the shard merged in: copy the caller's own objects, not ones loaded here
        own = [_copy(s) if isinstance(src, VectorIndex) else s for s, src in zip(loaded, shards)]
        base = own[0]
        for other in own[1:]:
            _merge_into(base, other)
        base.info.pop("shard_rows", None)
        base.info["merged_from"] = len(loaded)
        result = base
    if search_params:
        result.set_search_params(**search_params)
    if out is not None:
        result.save(out)
    return result


def _merge_on_disk(shards: Sequence[VectorIndex], out: Path, search_params: dict | None) -> VectorIndex:
    base = shards[0]
    if not index_kind(base.kind).codes_in_lists(base.index):
        raise UsageError(f"merge: on_disk needs an IVF index whose codes all live in its inverted lists "
                         f"(ivf_flat, or ivf_pq / ivf_pqfs with refine=None); these shards are {base.kind}"
                         + (f" with refine={base.params['refine']!r}" if base.params.get("refine") else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = _copy(base)
    ivf = faiss.extract_index_ivf(merged.index)
    ivf.reset()
    data = out.parent / f"{out.name}.{uuid.uuid4().hex[:8]}.ivfdata"
    odl = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data))
    for s in shards:  # one shard's lists at a time are read; the file grows list by list
        src = faiss.extract_index_ivf(s.index)
        lists = _plain_lists(src)
        for l in range(ivf.nlist):
            n = lists.list_size(l)
            if n:
                odl.add_entries(l, n, lists.get_ids(l), lists.get_codes(l))
    ivf.replace_invlists(odl, True)
    odl.this.disown()
    ivf.ntotal = merged.index.ntotal = sum(len(s) for s in shards)
    merged.info.pop("shard_rows", None)
    merged.info["merged_from"] = len(shards)
    if search_params:
        merged.set_search_params(**search_params)
    merged.save(out)
    return merged


def _plain_lists(ivf) -> faiss.InvertedLists:
    """Inverted lists whose get_codes() are the codes add_entries() takes (fast-scan packs them in blocks)."""
    invl = faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(invl, faiss.BlockInvertedLists):
        raise UsageError("merge: on_disk does not support fast-scan (ivf_pqfs) lists, which faiss keeps in "
                         "packed blocks; use ivf_pq with refine=None, or ivf_flat")
    return invl


# ---- query-time merging ---------------------------------------------------------------------------------

class ShardedIndex:
    """Shards searched as one index: each returns its top k, merged by score, equal scores by smaller id.

    Same contract and methods as VectorIndex (search, add, remove, set_search_params, save / load, len).
    New vectors go to the smallest shard.
    """

    def __init__(self, shards: Sequence[VectorIndex], paths: Sequence[Path | None] | None = None,
                 info: dict | None = None):
        if not shards:
            raise UsageError("ShardedIndex: no shards")
        self.shards = list(shards)
        self.paths = list(paths) if paths is not None else [None] * len(self.shards)
        self.info = dict(info or {})

    kind = property(lambda self: self.shards[0].kind)
    params = property(lambda self: self.shards[0].params)
    d = property(lambda self: self.shards[0].d)

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def n_dead(self) -> int:
        return sum(s.n_dead for s in self.shards)

    @property
    def needs_rebuild(self) -> bool:
        return any(s.needs_rebuild for s in self.shards)

    def ids(self) -> np.ndarray:
        return np.concatenate([s.ids() for s in self.shards])

    def set_search_params(self, **params) -> None:
        for s in self.shards:
            s.set_search_params(**params)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (n, d) -> scores float32 (n, k), ids int64 (n, k), -1 / -inf padding."""
        parts = [s.search(q, k) for s in self.shards]  # each (n, k)
        return merge_topk(np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1), k)

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Upsert: ids present in any shard are replaced; new rows go to the smallest shard."""
        self.remove(ids)
        i = min(range(len(self.shards)), key=lambda j: len(self.shards[j]))
        self.shards[i].add(x, ids)
        self.paths[i] = None  # changed: save() writes it anew

    def remove(self, ids) -> int:
        removed = 0
        for i, s in enumerate(self.shards):
            r = s.remove(ids)
            if r:
                self.paths[i] = None
            removed += r
        return removed

    # -- persistence: a manifest naming one file per shard --
    def save(self, path) -> None:
        """Write the manifest at path; shards not already in a file are written beside it first."""
        path = Path(path)
        names = []
        for i, (s, p) in enumerate(zip(self.shards, self.paths)):
            if p is None:
                p = path.parent / f"{path.name}.shard-{i:05d}"
                s.save(p)
                self.paths[i] = p
            names.append(os.path.relpath(Path(p).resolve(), path.parent.resolve()))
        header = {"format": "clipforge-sharded-index", "version": 1, "kind": self.kind, "d": self.d,
                  "search_params": _search_params(self.shards[0]), "info": self.info,
                  "shards": [{"path": nm, "n": len(s)} for nm, s in zip(names, self.shards)]}
        atomic_write(path, lambda f: f.write(header_bytes(_SHARDS_MAGIC, header)))

    @classmethod
    def load(cls, path) -> "ShardedIndex":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                header = read_header(f, _SHARDS_MAGIC)
        except (OSError, ValueError, struct.error) as e:
            raise ClipforgeError(f"{path}: cannot read sharded index ({e})") from e
        if header is None:
            raise ClipforgeError(f"{path}: not a clipforge sharded index")
        paths = [path.parent / s["path"] for s in header["shards"]]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ClipforgeError(f"{path}: shard file(s) missing: {missing[:3]}")
        self = cls([VectorIndex.load(p) for p in paths], paths, header.get("info"))
        if header.get("search_params"):
            self.set_search_params(**header["search_params"])
        return self


def _search_params(index: VectorIndex) -> dict:
    return {k: index.params[k] for k in index_kind(index.kind).search_params if k in index.params}


def open_index(path) -> "VectorIndex | ShardedIndex":
    """Load whatever index file is at path: a VectorIndex file or a sharded-index manifest."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_SHARDS_MAGIC))
    except OSError as e:
        raise ClipforgeError(f"{path}: cannot read index ({e})") from e
    return ShardedIndex.load(path) if magic == _SHARDS_MAGIC else VectorIndex.load(path)
