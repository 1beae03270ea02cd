"""Store schema migrations: MIGRATIONS[v] turns a version-v manifest into version v+1, until SCHEMA_VERSION.

Version 0 is a clip-retrieval output folder with no manifest (its users can bring their folders)."""

from __future__ import annotations

from pathlib import Path

from clipforge.errors import ClipforgeError
from clipforge.retrieval.store_files import read_npy

__all__ = ["SCHEMA_VERSION", "MIGRATIONS", "migrate"]

SCHEMA_VERSION = 1


def _migrate_0_adopt_clip_retrieval(root: Path, manifest: dict) -> dict:
    """Version 0 = a clip-retrieval output folder with no manifest: list its shards, number its rows."""
    shards, next_id = [], 0
    for npy in sorted((root / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1])):
        i = int(npy.stem.rsplit("_", 1)[1])
        arr = read_npy(npy)
        dim = arr.shape[1]
        shards.append({"index": i, "count": int(arr.shape[0]), "first_id": next_id, "deleted": []})
        next_id += int(arr.shape[0])
    if not shards:
        raise ClipforgeError(f"{root}: no manifest.json and no img_emb/img_emb_*.npy: not an embedding store")
    mods = ["img"] + (["text"] if (root / "text_emb").is_dir() else [])
    return {"format": "clipforge-embedding-store", "version": 1, "model": manifest.get("model"),
            "dim": int(dim), "modalities": mods, "shards": shards, "next_id": next_id,
            "next_shard": max(s["index"] for s in shards) + 1}


MIGRATIONS = {0: _migrate_0_adopt_clip_retrieval}


def migrate(root: Path, manifest: dict) -> tuple[dict, bool]:
    v = manifest.get("version", 0)
    if v > SCHEMA_VERSION:
        raise ClipforgeError(f"{root}: store schema version {v} is newer than this clipforge ({SCHEMA_VERSION});"
                             " upgrade clipforge")
    changed = False
    while v < SCHEMA_VERSION:
        manifest = MIGRATIONS[v](root, manifest)
        v, changed = manifest["version"], True
    return manifest, changed
