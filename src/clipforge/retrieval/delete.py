"""Deleting items from an index directory: by id, by path glob, or by metadata filter.

    delete_items("my-index", ids=[3, 17])
    delete_items("my-index", paths=["*/private/*"])          # a file's absolute path or its key
    delete_items("my-index", filters=["caption*=screenshot"])  # the search filters, ANDed

Ids are stable: a deleted id is never given to another item (the store counts ids up, never reuses one).
A deleted item stays out of the index when `clipforge index update` runs again even though its file is
still in the source: its key is listed under "excluded" in index.json (`update_index(include_deleted=True)`
clears the list, and the items come back with new ids).

Order of writes, each atomic: index.json listing the keys as excluded, the store's manifest (the commit
point: from here on the items are gone for every reader), then index.faiss without them, then index.json's
counts. A full or read-only disk before the commit deletes nothing (`DiskError`: one line); after it, the
delete stands and only the derived files lag. A process killed after the commit leaves an
index file from the previous store generation; readers sync it in memory and the next writer repairs the
file (`sync.py`), so search never returns a deleted item. One writer at a time (the store's lock).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from clipforge.errors import ClipforgeError, UsageError, disk_error
from clipforge.retrieval.index_dir import INDEX_FILE, INFO_FILE, read_info
from clipforge.retrieval.filters import Filter, filter_mask, parse_filter
from clipforge.retrieval.sharded import open_index
from clipforge.retrieval.store import EmbeddingStore, atomic_write_json
from clipforge.retrieval.sync import sync_index

__all__ = ["delete_items", "select_items"]

log = logging.getLogger("clipforge.retrieval")


INT64_MAX = 2**63 - 1


def _checked_ids(ids) -> np.ndarray:
    """`ids` as int64, each a whole number from 0 to 2**63-1 (an id outside can name no item: it is refused,
    not wrapped into one that reports as "-1 not found")."""
    out = []
    for v in ids:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= INT64_MAX:
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
            raise UsageError(f"`ids`: {shown} is not an item id (a whole number from 0 to {INT64_MAX})")
        out.append(int(v))
    return np.asarray(out, dtype=np.int64)


def _selection(table, ids, paths, filters) -> np.ndarray:
    """(N,) bool over the store's live rows."""
    given = [name for name, v in (("ids", ids), ("paths", paths), ("filters", filters)) if v]
    if len(given) != 1:
        raise UsageError("give exactly one of `ids`, `paths` or `filters` to choose the items to delete"
                         + (f" (got {', '.join(f'`{g}`' for g in given)})" if given else ""))
    if ids:
        return np.isin(table.column("id").to_numpy().astype(np.int64), _checked_ids(ids))
    if paths:
        mask = np.zeros(table.num_rows, dtype=bool)
        cols = [c for c in ("path", "image_path", "url", "key") if c in table.column_names]
        for glob in paths:
            if not isinstance(glob, str) or not glob.strip():
                raise UsageError(f"`paths`: a glob must be a non-empty string, got {glob!r}")
            parse_filter(f"key~{glob}")  # refuses a glob that does not compile, or an over-long one
            for col in cols:
                mask |= Filter(col, "~", glob).mask(table)
        return mask
    return filter_mask(table, [parse_filter(f) if isinstance(f, str) else f for f in filters])


def select_items(index_dir, *, ids: Optional[Iterable[int]] = None, paths: Optional[Sequence[str]] = None,
                 filters: Optional[Sequence[str]] = None) -> list[dict]:
    """The live items a delete with these arguments would remove: [{"id", "key", "path"}]."""
    ids = list(ids) if ids is not None else None
    with EmbeddingStore.open(index_dir) as store:
        table = store.metadata()
    mask = _selection(table, ids, paths, filters)
    cols = [c for c in ("id", "key", "path") if c in table.column_names]
    return table.filter(mask).select(cols).to_pylist()


def delete_items(index_dir, *, ids: Optional[Iterable[int]] = None, paths: Optional[Sequence[str]] = None,
                 filters: Optional[Sequence[str]] = None, dry_run: bool = False) -> dict:
    """Remove the chosen live items from the index (store, faiss index and manifest).

    Exactly one of `ids` (stable item ids), `paths` (globs over a file's absolute path or its key; any may
    match) or `filters` (search filters such as "caption*=dog", all must match). Returns {"deleted": n,
    "ids": [...], "keys": [...], "not_found": [ids asked for that are not live], "count": live items left}.
    `dry_run` reports what would go without writing anything.

    On a full or read-only disk this raises `DiskError` and nothing is deleted (see `_delete`).
    """
    root = Path(index_dir)
    try:
        return _delete(root, ids, paths, filters, dry_run)
    except Exception as e:  # noqa: BLE001 - a full / read-only disk becomes one line; the rest is re-raised
        disk = disk_error(e, root, note="nothing was deleted: the index is as it was")
        if disk is None:
            raise
        raise disk from e


def _delete(root: Path, ids, paths, filters, dry_run: bool) -> dict:
    """The delete. Writes, in order: index.json listing the keys as excluded (so a later `index update`
    keeps them out even if the last write below fails), the store manifest (the commit point), index.faiss
    (best effort: readers sync a stale one), index.json's counts (best effort after the commit). A disk
    error before the commit leaves the items live; index.json is then put back as it was when the disk
    allows."""
    ids = list(ids) if ids is not None else None  # read twice below
    info = read_info(root)
    wanted = _checked_ids(ids) if ids else None
    with EmbeddingStore.open(root, writable=not dry_run) as store:
        table = store.metadata()
        mask = _selection(table, ids, paths, filters)
        sel_ids = table.column("id").to_numpy().astype(np.int64)[mask]
        sel_keys = [str(k) for k in table.column("key").filter(mask).to_pylist()]
        not_found = [] if wanted is None else sorted(set(wanted.tolist()) - set(sel_ids.tolist()))
        out = {"deleted": int(len(sel_ids)), "ids": sel_ids.tolist(), "keys": sel_keys, "not_found": not_found,
               "dry_run": dry_run}
        if dry_run or not len(sel_ids):
            out["count"] = len(store)
            return out
        now = round(time.time(), 3)
        before = json.loads(json.dumps(info))
        excluded = dict(info.get("excluded", {}))
        excluded.update({k: {"id": int(i), "deleted": now} for k, i in zip(sel_keys, sel_ids.tolist())})
        info["excluded"] = excluded
        atomic_write_json(root / INFO_FILE, info)
        try:
            store.delete_ids(sel_ids)  # the commit point
        except BaseException:
            with contextlib.suppress(Exception):
                atomic_write_json(root / INFO_FILE, before)
            raise
        generation = store.generation
        out["count"] = len(store)
        # still holding the writer lock: no other writer can interleave its own index file
        index_state = _update_index_file(root, store, sel_ids, generation)
    info["count"] = out["count"]
    info["deleted_rows"] = int(info.get("deleted_rows", 0)) + len(sel_ids)
    if index_state is not None:
        info["index"] = {**info.get("index", {}), **index_state}
    info["updated"] = now
    try:
        atomic_write_json(root / INFO_FILE, info)
    except Exception as e:  # noqa: BLE001 - the delete is committed and its keys recorded: only counts are stale
        if disk_error(e) is None:
            raise
        log.warning("%s: deleted, but its item count could not be updated (%s); `clipforge index update` "
                    "refreshes it", root / INFO_FILE, e)
    log.info("deleted %d items from %s", len(sel_ids), root)
    return out


def _update_index_file(root: Path, store: EmbeddingStore, removed: np.ndarray, generation: int) -> dict | None:
    """Remove `removed` from index.faiss (repairing it first if an earlier writer was killed); returns what
    index.json records about it, or None when the file could not be updated (readers then sync in memory and
    the next `index update` rebuilds it)."""
    path = root / INDEX_FILE
    if not path.exists():
        return None
    try:
        index = open_index(path)
        if index.info.get("store_generation") == generation - 1:  # the usual case: current before this delete
            index.remove(removed)
            index.info["store_generation"] = generation
        else:
            x, ids = store.load("img")
            index, _ = sync_index(index, x, ids, generation, exact_small=False)
        index.save(path)
    except (ClipforgeError, RuntimeError, OSError) as e:  # e.g. inverted lists on a read-only disk
        log.warning("%s: could not update the index file (%s); searches stay correct, and `clipforge index "
                    "update` rebuilds it", path, e)
        return None
    return {"n": len(index), "store_generation": generation}
