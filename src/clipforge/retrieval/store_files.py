"""The files of an embedding store and how they are read: the manifest, the shards' embedding arrays (.npy,
never pickles) and metadata (parquet). A file that cannot be read is a one-line `ClipforgeError` naming it.

    ROOT/manifest.json                      (MANIFEST_FILE) model reference, dim, schema version, shards, tombstones
    ROOT/img_emb/img_emb_{i}.npy            (n_i, D) float16, rows L2-normalised
    ROOT/text_emb/text_emb_{i}.npy          optional, same rows
    ROOT/metadata/metadata_{i}.parquet      one row per embedding: `id` int64, `key` str, then user columns
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.errors import ClipforgeError
from clipforge.json_file import read_json_file

__all__ = ["MANIFEST_FILE", "SHARD_RE", "shard_path", "shard_ids", "shard_keys", "read_npy", "read_parquet",
           "read_schema_names", "read_manifest"]

MANIFEST_FILE = "manifest.json"
# Columns clip-retrieval writes that name the item; the first present becomes `key` for adopted folders.
KEY_COLUMNS = ("key", "image_path", "url", "path")
SHARD_RE = re.compile(r"^(img_emb|text_emb|metadata)_(\d+)\.(npy|parquet)$")


def shard_path(root: Path, kind: str, i: int) -> Path:
    """Shard i's file of `kind` (img_emb, text_emb or metadata)."""
    ext = "parquet" if kind == "metadata" else "npy"
    return root / kind / f"{kind}_{i}.{ext}"


def _damaged(path: Path, e: BaseException) -> ClipforgeError:
    return ClipforgeError(f"{path}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "the store is damaged")


def read_npy(path: Path) -> np.ndarray:
    """A shard's embeddings, memory-mapped; a missing, truncated or non-.npy file (pickles are never loaded) is a
    one-line `ClipforgeError` naming it."""
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        if "pickle" in str(e):
            raise ClipforgeError(f"{path}: holds a pickle, not a .npy array (pickles are never loaded); "
                                 "the store is damaged") from None
        raise _damaged(path, e) from None
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ClipforgeError(f"{path}: not a 2-D embedding array; the store is damaged")
    return x


def read_parquet(path: Path, columns=None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise _damaged(path, e) from None


def read_schema_names(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (OSError, ValueError, pa.ArrowException) as e:
        raise _damaged(path, e) from None


def read_manifest(path: Path) -> dict:
    try:
        m = read_json_file(path)
    except ClipforgeError as e:
        raise ClipforgeError(f"{e}; the store is damaged") from None
    if not isinstance(m, dict):
        raise ClipforgeError(f"{path}: not a store manifest (not a JSON object); the store is damaged")
    return m


def shard_ids(root: Path, shard: dict) -> np.ndarray:
    """(n,) int64: the ids of a manifest shard's rows (numbered from `first_id` in an adopted folder)."""
    p = shard_path(root, "metadata", shard["index"])
    if p.exists():
        names = read_schema_names(p)
        if "id" in names:
            return read_parquet(p, columns=["id"]).column("id").to_numpy().astype(np.int64)
    return shard["first_id"] + np.arange(shard["count"], dtype=np.int64)  # adopted folders


def shard_keys(root: Path, shard: dict, ids: np.ndarray) -> list[str]:
    """The keys of a manifest shard's rows: its first KEY_COLUMNS column, else the ids as strings."""
    p = shard_path(root, "metadata", shard["index"])
    if p.exists():
        names = read_schema_names(p)
        for col in KEY_COLUMNS:
            if col in names:
                return [str(k) for k in read_parquet(p, columns=[col]).column(col).to_pylist()]
    return [str(i) for i in ids]
