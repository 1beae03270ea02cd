"""Embedding store: L2-normalised float16 embeddings in shards, parquet metadata, one JSON manifest.

Layout: the one clip-retrieval writes (so its users can bring their folders), plus a manifest
(`store_files`; older layouts are migrated on open: `store_migrations`).

`key` is the caller's stable string id (a relative path, a URL, a sample key); `id` is the int64 the faiss
index returns. An id is assigned once per key and never reused, so results stay valid across updates.

Crash safety: a shard's files are each written to a temp file and `os.replace`d, and only then is the
manifest replaced (the commit point). Every commit increments the manifest's `generation`, so a reader (a
running server, an index file built from the store) can tell cheaply whether it has seen the latest state. A writer killed in between leaves files the manifest does not list;
they are ignored, and removed by the next writer. `done_keys()` lists what is committed, so a resumed job
skips exactly those: no duplicates, no gaps. One writer at a time (an exclusive lock file enforces it).

Transactions: inside `with store.transaction():` appends, deletes and compactions change the store as this
writer sees it (`done_keys`, `load`, ...), and write their shard files, but the manifest is replaced once, when
the block ends: a reader sees the generation before or the one after, never a part of it (e.g. an index
update's removals without its additions). A block that raises publishes nothing; its shard files are removed
(and, if the process died instead, by the next writer, like any file the manifest does not list).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.atomic import atomic_write, atomic_write_json  # noqa: F401 (re-exported)
from clipforge.errors import ClipforgeError, UsageError
from clipforge.retrieval.store_files import (MANIFEST_FILE, SHARD_RE, read_manifest, read_npy, read_parquet,
                                             shard_ids, shard_keys, shard_path)
from clipforge.retrieval.store_lock import StoreBusy, writer_lock  # noqa: F401 (StoreBusy re-exported)
from clipforge.retrieval.store_migrations import SCHEMA_VERSION, migrate

MODALITIES = ("img", "text")


_atomic_write = atomic_write  # the shard writer (tests replace it to fail a write midway)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) -> float32 rows of unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


# ---- the store ----------------------------------------------------------------------------------------

class EmbeddingStore:
    """Open with `EmbeddingStore.create(root, dim, model=...)` or `EmbeddingStore.open(root, writable=...)`."""

    def __init__(self, root: Path, manifest: dict, writable: bool, lock_fd: int | None):
        self.root, self.manifest, self.writable, self._lock_fd = root, manifest, writable, lock_fd
        self._keys: dict[str, tuple[int, int, int]] | None = None  # key -> (id, shard index, row)
        self._txn: dict | None = None  # inside transaction(): {"base": the published manifest, "dirty": bool}

    # -- opening --
    @classmethod
    def create(cls, root, dim: int, model: Any = None, modalities: Iterable[str] = ("img",),
               exist_ok: bool = False) -> "EmbeddingStore":
        """Make a new empty store (or open an existing one with the same dim when exist_ok)."""
        root = Path(root)
        mods = list(modalities)
        bad = [m for m in mods if m not in MODALITIES]
        if bad or "img" not in mods and "text" not in mods:
            raise UsageError(f"modalities {mods!r}: choose from {list(MODALITIES)}")
        if (root / MANIFEST_FILE).exists():
            if not exist_ok:
                raise ClipforgeError(f"{root}: a store already exists (open it, or choose another directory)")
            store = cls.open(root, writable=True)
            if store.dim != dim:
                store.close()
                raise ClipforgeError(f"{root}: existing store has dim {store.dim}, asked for {dim}")
            return store
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": "clipforge-embedding-store", "version": SCHEMA_VERSION, "model": model,
                    "dim": int(dim), "modalities": mods, "shards": [], "next_id": 0, "next_shard": 0}
        lock = cls._lock(root)
        try:
            atomic_write_json(root / MANIFEST_FILE, manifest)
        except BaseException:  # e.g. a full disk: the lock must not outlive the failed call
            os.close(lock)
            raise
        return cls(root, manifest, True, lock)

    @classmethod
    def open(cls, root, writable: bool = False) -> "EmbeddingStore":
        root = Path(root)
        if not root.is_dir():
            raise ClipforgeError(f"{root}: no such store directory")
        lock = cls._lock(root) if writable else None
        try:
            mpath = root / MANIFEST_FILE
            manifest = read_manifest(mpath) if mpath.exists() else {"version": 0}
            manifest, changed = migrate(root, manifest)
            if changed and writable:
                atomic_write_json(mpath, manifest)
            store = cls(root, manifest, writable, lock)
            if writable:
                store._remove_orphans()
        except BaseException:  # a damaged manifest, a full disk: the lock must not outlive the failed call
            if lock is not None:
                os.close(lock)
            raise
        return store

    @staticmethod
    def _lock(root: Path) -> int:
        return writer_lock(root)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _remove_orphans(self) -> None:
        """Delete shard files and temp files the manifest does not list (left by a killed writer)."""
        listed = {s["index"] for s in self.manifest["shards"]}
        for sub in ("img_emb", "text_emb", "metadata"):
            d = self.root / sub
            if not d.is_dir():
                continue
            for p in d.iterdir():
                m = SHARD_RE.match(p.name)
                if (m and int(m.group(2)) not in listed) or (p.name.startswith(".") and p.name.endswith(".tmp")):
                    p.unlink()

    # -- facts --
    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    @property
    def model(self) -> Any:
        return self.manifest.get("model")

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest["modalities"])

    @property
    def generation(self) -> int:
        """How many commits this store has seen (0 for stores written before generations were counted)."""
        return int(self.manifest.get("generation", 0))

    def __len__(self) -> int:
        """Live (not deleted) rows."""
        return sum(s["count"] - len(s["deleted"]) for s in self.manifest["shards"])

    def stats(self) -> dict:
        total = sum(s["count"] for s in self.manifest["shards"])
        return {"live": len(self), "deleted": total - len(self), "shards": len(self.manifest["shards"]),
                "dim": self.dim, "model": self.model, "version": self.manifest["version"],
                "generation": self.generation}

    def _path(self, kind: str, i: int) -> Path:
        return shard_path(self.root, kind, i)

    def _shard_ids(self, shard: dict) -> np.ndarray:
        return shard_ids(self.root, shard)

    def _shard_keys(self, shard: dict, ids: np.ndarray) -> list[str]:
        return shard_keys(self.root, shard, ids)

    def _key_map(self) -> dict[str, tuple[int, int, int]]:
        if self._keys is None:
            km = {}
            for s in self.manifest["shards"]:
                ids = self._shard_ids(s)
                dead = set(s["deleted"])
                for row, (k, i) in enumerate(zip(self._shard_keys(s, ids), ids.tolist())):
                    if row not in dead:
                        km[k] = (i, s["index"], row)
            self._keys = km
        return self._keys

    def done_keys(self) -> set[str]:
        """Keys whose embeddings are committed and live: a resumed job skips exactly these."""
        return set(self._key_map())

    done_ids = done_keys  # the name the embedding job asks for

    def id_of(self, keys: Iterable[str]) -> np.ndarray:
        """Stable int64 ids of live keys, -1 for unknown keys."""
        km = self._key_map()
        return np.array([km[k][0] if k in km else -1 for k in keys], dtype=np.int64)

    # -- writing --
    def _require_writable(self):
        if not self.writable:
            raise UsageError("store opened read-only: use EmbeddingStore.open(root, writable=True)")

    def append(self, keys: list[str], img_emb: np.ndarray | None = None, text_emb: np.ndarray | None = None,
               metadata: Mapping[str, Any] | pa.Table | None = None, replace: bool = False) -> np.ndarray:
        """Write one shard of rows; returns their int64 ids.

        keys: stable string ids. A key already live raises unless replace=True, which tombstones the old row
        and gives the new row the *same* id (a re-embedded changed file keeps its id).
        img_emb / text_emb: (N, D) float arrays for the store's modalities; normalised here, kept as float16.
        metadata: columns of N values (dict or pyarrow Table); `id` and `key` are added by the store.
        """
        self._require_writable()
        keys = [str(k) for k in keys]
        n = len(keys)
        if len(set(keys)) != n:
            raise UsageError("append: keys within one call must be unique")
        embs = {"img": img_emb, "text": text_emb}
        for mod, arr in embs.items():
            if (arr is None) == (mod in self.modalities):
                raise UsageError(f"append: store modalities are {self.modalities}; "
                                 f"{mod}_emb {'missing' if arr is None else 'not expected'}")
            if arr is not None and np.shape(arr) != (n, self.dim):
                raise UsageError(f"append: {mod}_emb shape {np.shape(arr)}, expected ({n}, {self.dim})")
        table = metadata if isinstance(metadata, pa.Table) else pa.table(dict(metadata or {}))
        if metadata is not None and table.num_rows != n:
            raise UsageError(f"append: metadata has {table.num_rows} rows, expected {n}")
        for reserved in ("id", "key"):
            if reserved in table.column_names:
                raise UsageError(f"append: metadata column {reserved!r} is reserved (the store sets it)")
        if n == 0:
            return np.zeros(0, dtype=np.int64)

        km = self._key_map()
        live = [k for k in keys if k in km]
        if live and not replace:
            raise UsageError(f"append: {len(live)} keys already in the store (e.g. {live[0]!r}); "
                             "skip store.done_keys() or pass replace=True")
        m = json.loads(json.dumps(self.manifest))  # work on a copy; self.manifest changes only on commit
        ids = np.empty(n, dtype=np.int64)
        for j, k in enumerate(keys):
            if k in km:
                i, shard_index, row = km[k]
                ids[j] = i
                s = next(s for s in m["shards"] if s["index"] == shard_index)
                s["deleted"] = sorted(set(s["deleted"]) | {row})
            else:
                ids[j] = m["next_id"]
                m["next_id"] += 1

        i = m["next_shard"]
        for mod, arr in embs.items():
            if arr is not None:
                x = normalize_rows(arr).astype(np.float16)  # (N, D)
                (self.root / f"{mod}_emb").mkdir(exist_ok=True)
                _atomic_write(self._path(f"{mod}_emb", i), lambda f, x=x: np.save(f, x))
        table = table if metadata is not None else pa.table({})
        table = table.add_column(0, "key", pa.array(keys, pa.string())) if table.num_columns else \
            pa.table({"key": pa.array(keys, pa.string())})
        table = table.add_column(0, "id", pa.array(ids, pa.int64()))
        (self.root / "metadata").mkdir(exist_ok=True)
        _atomic_write(self._path("metadata", i), lambda f: pq.write_table(table, f))

        m["shards"].append({"index": i, "count": n, "first_id": int(ids.min()), "deleted": []})
        m["next_shard"] = i + 1
        self._commit(m)
        return ids

    def delete(self, keys: Iterable[str]) -> int:
        """Tombstone live keys (ids are not reused); returns how many were live. `compact()` reclaims space."""
        self._require_writable()
        km = self._key_map()
        return self._tombstone([km[k] for k in dict.fromkeys(keys) if k in km])

    def delete_ids(self, ids: Iterable[int]) -> int:
        """Tombstone live rows by their int64 ids (unknown ids are ignored); returns how many were live."""
        self._require_writable()
        want = {int(i) for i in ids}
        return self._tombstone([v for v in self._key_map().values() if v[0] in want])

    def _tombstone(self, hits: list[tuple[int, int, int]]) -> int:
        """Mark (id, shard index, row) rows deleted in one commit."""
        if not hits:
            return 0
        m = json.loads(json.dumps(self.manifest))
        by_index = {s["index"]: s for s in m["shards"]}
        for _, shard_index, row in hits:
            s = by_index[shard_index]
            s["deleted"] = sorted(set(s["deleted"]) | {row})
        self._commit(m)
        return len(hits)

    def compact(self) -> None:
        """Rewrite all live rows into fresh shards (same ids, same keys), then drop the old shard files."""
        self._require_writable()
        if not any(s["deleted"] for s in self.manifest["shards"]):
            return
        emb = {mod: self.load(mod, as_float32=False)[0] for mod in self.modalities}
        meta = self.metadata()
        m = json.loads(json.dumps(self.manifest))
        i = m["next_shard"]
        for mod, x in emb.items():
            _atomic_write(self._path(f"{mod}_emb", i), lambda f, x=x: np.save(f, x))
        _atomic_write(self._path("metadata", i), lambda f: pq.write_table(meta, f))
        ids = meta.column("id").to_numpy()
        m["shards"] = [{"index": i, "count": len(ids), "first_id": int(ids.min()) if len(ids) else 0,
                        "deleted": []}] if len(ids) else []
        m["next_shard"] = i + 1
        self._commit(m)
        if self._txn is None:  # in a transaction the published manifest still lists the old shards
            self._remove_orphans()

    def _commit(self, m: dict) -> None:
        if self._txn is not None:  # published when the transaction ends
            self.manifest, self._keys = m, None
            self._txn["dirty"] = True
            return
        m["generation"] = int(m.get("generation", 0)) + 1
        atomic_write_json(self.root / MANIFEST_FILE, m)  # the commit point
        self.manifest, self._keys = m, None

    @contextlib.contextmanager
    def transaction(self):
        """Make every change inside the block one commit (one new generation), published when it ends; on an
        exception nothing is published and the block's shard files are removed. Nested blocks join the
        outer one."""
        self._require_writable()
        if self._txn is not None:
            yield self
            return
        self._txn = {"base": self.manifest, "dirty": False}
        try:
            yield self
        except BaseException:
            base, self._txn = self._txn["base"], None
            self.manifest, self._keys = base, None
            with contextlib.suppress(OSError):
                self._remove_orphans()
            raise
        txn, self._txn = self._txn, None
        if txn["dirty"]:
            try:
                self._commit(self.manifest)  # the one commit point of the whole block
            except BaseException:
                self.manifest, self._keys = txn["base"], None
                raise
            self._remove_orphans()  # shards a compaction inside the block replaced

    # -- reading --
    def _live_rows(self, shard: dict) -> np.ndarray:
        keep = np.ones(shard["count"], dtype=bool)
        keep[np.asarray(shard["deleted"], dtype=np.int64)] = False
        return keep

    def _read_shard(self, modality: str, s: dict) -> np.ndarray:
        path = self._path(f"{modality}_emb", s["index"])
        x = read_npy(path)
        if x.shape != (s["count"], self.dim):
            raise ClipforgeError(f"{path}: shape {x.shape}, manifest says ({s['count']}, {self.dim}); "
                                 "the store is damaged")
        return x

    def load(self, modality: str = "img", as_float32: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """All live embeddings: ((N, D) float32 unit rows, (N,) int64 ids), in shard order."""
        if modality not in self.modalities:
            raise UsageError(f"modality {modality!r} not in this store: {self.modalities}")
        xs, ids = [], []
        for s in self.manifest["shards"]:
            keep = self._live_rows(s)
            x = self._read_shard(modality, s)
            xs.append(np.asarray(x[keep]))
            ids.append(self._shard_ids(s)[keep])
        x = np.concatenate(xs) if xs else np.zeros((0, self.dim), np.float16)
        i = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        # float16 rounding leaves norms at 1 +- 1e-3; renormalise so cosine scores are exact dot products.
        return (normalize_rows(x) if as_float32 else x), i

    def iter_shards(self, modality: str = "img", positions=None):
        """Yield ((n_i, D) float32 unit rows, (n_i,) int64 ids) per committed shard, live rows only.

        positions: the shards' positions in the manifest to read (default all), so a job can process a
        collection larger than memory one shard at a time, or a worker only its part."""
        if modality not in self.modalities:
            raise UsageError(f"modality {modality!r} not in this store: {self.modalities}")
        shards = self.manifest["shards"]
        for pos in (range(len(shards)) if positions is None else positions):
            s = shards[pos]
            keep = self._live_rows(s)
            x = self._read_shard(modality, s)
            yield normalize_rows(np.asarray(x[keep])), self._shard_ids(s)[keep]

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        """Live rows' metadata as one table (columns `id`, `key`, then user columns), in shard order."""
        tables = []
        for s in self.manifest["shards"]:
            keep = self._live_rows(s)
            p = self._path("metadata", s["index"])
            if p.exists():
                t = read_parquet(p)
            else:
                t = pa.table({})
            if "id" not in t.column_names:  # adopted clip-retrieval folder
                ids = self._shard_ids(s)
                t = t.add_column(0, "key", pa.array(self._shard_keys(s, ids))) if "key" not in t.column_names \
                    else t
                t = t.add_column(0, "id", pa.array(ids, pa.int64()))
            tables.append(t.filter(pa.array(keep)))
        if not tables:
            return pa.table({"id": pa.array([], pa.int64()), "key": pa.array([], pa.string())})
        t = pa.concat_tables(tables, promote_options="default")
        return t.select(columns) if columns else t
