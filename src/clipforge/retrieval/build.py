"""Embedding jobs: `build_index` (resumable) and `update_index` (incremental), then its faiss index (`faiss_build`).

An index directory (`index_dir.IndexDir`) is an `EmbeddingStore` plus index.faiss (the VectorIndex over the
live image embeddings) and index.json, the job's manifest: source, model, precision, counts, skipped files by
reason, the index kind chosen and its recall@10 against exact search on a sample of the collection's own
vectors (flat: 1.0, exact; a build whose recall is below `min_recall` warns: `build_faiss`).

The source spec and every file path in the metadata are recorded absolute (`"paths": "absolute"` in
index.json), so an index built from `files:corpus` serves thumbnails and updates from any working directory.

Work is cut into shards of `shard_size` samples, each split into batches; a `clipforge.scale` executor encodes
them (local: `clipforge.encode` here, its DataLoader workers decoding whole batches while the model runs; ray:
one shard per unit of work on a cluster), and they come back in plan order. A shard is appended to the store
atomically, so a killed build resumes after the last committed shard: samples whose keys are done are skipped,
the rest are embedded in the same order, the same batches, and get the same ids. Files that could not be decoded are recorded
(key -> reason) in index.json and not retried on resume; `update_index` retries them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from clipforge.data.decode import SkipCounter
from clipforge.output_dirs import vet_output_dir
from clipforge.data.sample import text_safe
from clipforge.data.sources import absolute_spec, open_source
from clipforge.data.sources.trust import accept_stored
from clipforge.errors import UsageError
from clipforge.models.token_merge import token_merge_setting
from clipforge.progress import Progress
from clipforge.retrieval.faiss_build import MIN_RECALL, build_faiss, check_min_recall
from clipforge.retrieval.index_dir import INDEX_FILE, INFO_FILE, IndexDir, read_info
from clipforge.retrieval.store import EmbeddingStore, atomic_write_json
from clipforge.scale import EXECUTORS, EncodeJob, Executor, create_executor

log = logging.getLogger("clipforge.retrieval")
INFO_VERSION = 1
DEFAULT_SHARD_SIZE = 10_000
_BASE_COLUMNS = {"path": pa.string(), "caption": pa.string(), "captions": pa.string(), "size": pa.int64(),
                 "mtime": pa.float64(), "label": pa.int64()}


# ---- the embedding loop ---------------------------------------------------------------------------------

def _close_fd(fd: int, worker_id: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _column(values: list) -> pa.Array:
    """One user metadata column with a type that stays stable across shards (numbers -> float64)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if all(isinstance(v, str) for v in present):
        return pa.array([None if v is None else text_safe(v) for v in values], pa.string())
    return pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())


def _metadata_table(captions: list[list[str]], meta: list[dict]) -> pa.Table:
    path = [None if m.get("path") is None else text_safe(str(m["path"])) for m in meta]
    cols = {"path": path, "caption": [c[0] if c else "" for c in captions],
            "captions": [json.dumps(c) for c in captions], "size": [m.get("size") for m in meta],
            "mtime": [m.get("mtime") for m in meta], "label": [m.get("label") for m in meta]}
    arrays = {k: pa.array(v, _BASE_COLUMNS[k]) for k, v in cols.items()}
    for k in sorted({k for m in meta for k in m} - set(_BASE_COLUMNS) - {"id", "key"}):
        arrays[k] = _column([m.get(k) for m in meta])
    return pa.table(arrays)


def _embed(store: EmbeddingStore, source, indices: list[int], runner: Executor, info: dict, info_path: Path, *,
           batch_size: int, shard_size: int, replace: bool, progress, on_batch) -> dict:
    """Embed source[indices] into the store, one atomic shard per `shard_size` samples.

    `runner`: the `clipforge.scale` executor that encodes the planned batches (here, or e.g. on a Ray cluster),
    one shard per unit of work; the shards are committed here, in plan order."""
    text = "text" in store.modalities
    shards = [indices[i:i + shard_size] for i in range(0, len(indices), shard_size)]
    batches, shard_of = [], []  # batches never straddle shards, so a resume re-forms the same batches
    for j, shard in enumerate(shards):
        for i in range(0, len(shard), batch_size):
            batches.append(shard[i:i + batch_size])
            shard_of.append(j)
    skipped = SkipCounter()
    # what opening the source found (bad manifest rows, over-cap / non-regular / cut tar members) is never
    # embedded and never retried silently: it is counted in index.json like a file that would not decode
    for key, reason in getattr(source, "open_skipped", SkipCounter()).samples:
        info["bad"][key] = reason
    added: list[np.ndarray] = []
    n_done, t0 = 0, time.perf_counter()
    bar = Progress(len(indices), desc="embedding", unit="img", progress=progress)
    pending = {"keys": [], "img": [], "txt": [], "captions": [], "meta": []}

    def commit():
        if pending["keys"]:
            img = np.concatenate(pending["img"])  # (N, D)
            txt = np.concatenate(pending["txt"]) if text else None  # rows without a caption: zero vectors
            added.append(store.append(pending["keys"], img, txt, _metadata_table(pending["captions"],
                                                                                  pending["meta"]),
                                      replace=replace))
        atomic_write_json(info_path, info)  # records this shard's bad files
        for v in pending.values():
            v.clear()

    lock_fd = getattr(store, "_lock_fd", None)
    # Forked decoding workers inherit the store's writer lock; a worker outliving a killed parent would keep it
    # held and block the resume. Each worker closes its copy (the parent's stays locked).
    init = functools.partial(_close_fd, lock_fd) if lock_fd is not None else None
    try:
        it = runner.iter_batches(batches, shard_of, source=source, progress=False, worker_init_fn=init)
        for b, batch in enumerate(it):
            for key, reason in batch.skipped.samples:
                skipped.add(key, reason)
                info["bad"][key] = reason
            if batch.ids:
                pending["img"].append(batch.feats.numpy())
                if text:
                    pending["txt"].append(batch.text_feats.numpy())
                pending["keys"] += batch.ids
                pending["captions"] += batch.captions
                pending["meta"] += [{**m, **({"label": y} if y is not None else {})}
                                    for m, y in zip(batch.meta, batch.labels)]
            n = len(batch.ids) + batch.skipped.total
            n_done += n
            bar.set_postfix(skipped=skipped.total)
            bar.update(n)
            if b + 1 == len(batches) or shard_of[b + 1] != shard_of[b]:
                commit()
            if on_batch is not None:
                on_batch({"done": n_done, "total": len(indices), "skipped": skipped.total})
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    return {"embedded": n_done - skipped.total, "skipped": skipped, "seconds": dt,
            "images_per_s": n_done / dt if dt > 0 and n_done else 0.0,
            "ids": np.concatenate(added) if added else np.zeros(0, np.int64)}


def _keys_of(source) -> list:
    """(position, sample) for every sample, without decoding images."""
    if getattr(source, "random_access", True):
        return [(i, source[i]) for i in range(len(source))]
    return list(enumerate(source))


# ---- public jobs --------------------------------------------------------------------------------------

def build_index(source: str, model: str, out_dir, *, batch_size: int = 64, workers: int = 0,
                max_memory=None, precision: str = "auto", shard_size: int = DEFAULT_SHARD_SIZE,
                device=None, text: str | bool = "auto", index_kind: str = "auto", progress: bool | None = None,
                source_options: dict | None = None,
                on_batch: Callable[[dict], None] | None = None, executor: str = "local",
                executor_options: dict | None = None, engine: str = "torch", threads: int | None = None,
                min_recall: float = MIN_RECALL, token_merge=None, merge_method: str | None = None) -> dict:
    """Embed every image of a data-layer source into out_dir, then build its faiss index.

    Re-running on the same out_dir resumes a killed build (same source and model required). text: "auto"
    stores caption embeddings (text_emb/) when the source has captions. `index_kind` None embeds only (no
    index.faiss; a later build on the same out_dir adds it). `executor`: "local" (this process) or "ray"
    (a Ray cluster, `executor_options` as `clipforge.scale.RayExecutor` declares them: address,
    num_workers, ...); the shards and their ids are the same. `engine` (torch | onnx | openvino | auto) is the
    inference runtime the executor runs the model with (`clipforge.encode`), with `threads`; it is recorded,
    and updates and queries use it unless told otherwise. The index's recall@10 against exact search is
    measured and recorded; below `min_recall` the build warns (`build_faiss`). `token_merge` / `merge_method`:
    token merging in a ViT image tower (`models.token_merge`: faster, approximate; None or 0 exact), recorded
    in index.json: a resumed build and `update_index` embed with it, image queries too (`IndexSearcher`).
    Returns a summary (also index.json).
    """
    if batch_size < 1 or shard_size < 1 or workers < 0:
        raise UsageError(f"need batch_size >= 1, shard_size >= 1, workers >= 0; got {batch_size}, "
                         f"{shard_size}, {workers}")
    EXECUTORS.check(executor, executor_options or {})  # a misplaced option fails before any work
    check_min_recall(min_recall)
    root, _ = vet_output_dir(out_dir, "index", param="out_dir", overwritable=False,  # never into other files
                             recognise=lambda p: IndexDir(p).is_own_output())
    info_path = root / INFO_FILE
    ref = str(Path(model).resolve()) if Path(model).is_dir() else str(model)
    source = absolute_spec(source)  # recorded so that `index update` and /thumb work from any directory
    src = open_source(source, **(source_options or {}))  # first: a source that is an index says so
    info = read_info(root) if info_path.exists() else None
    if info is None and IndexDir(root).manifest_path.exists():
        raise UsageError(f"{root}: holds an embedding store without {INFO_FILE}; choose another `out_dir`")
    if info is not None:
        if (absolute_spec(info["source"]), info["model"]) != (source, ref):
            raise UsageError(f"{root} holds an index of {info['source']!r} with {info['model']!r}; "
                             "use `clipforge index update` for it, or choose another `out_dir`")
        precision = info["precision"]  # a resumed build embeds exactly like the first run
        engine = info.get("engine", engine)
    merge = _token_merge(root, info, token_merge, merge_method)
    positions = _keys_of(src)
    if text == "auto":
        text = any(s.captions for _, s in positions[:64])
    text = bool(info["text"]) if info is not None else bool(text)
    job = EncodeJob(source, ref, dict(source_options or {}), precision=precision, engine=engine, threads=threads,
                    token_merge=merge, device=device, captions=text, workers=workers)
    runner = create_executor(executor, job, **(executor_options or {}))
    prec, dim = runner.precision, runner.embed_dim
    if info is None:
        info = {"format": "clipforge-index", "version": INFO_VERSION, "source": source, "paths": "absolute",
                "source_options": source_options or {}, "model": ref, "precision": prec, "text": bool(text),
                "engine": engine, "token_merge": merge,
                "batch_size": batch_size, "shard_size": shard_size, "status": "building", "bad": {},
                "created": time.time()}
    mods = ("img", "text") if info["text"] else ("img",)
    root.mkdir(parents=True, exist_ok=True)
    with runner, EmbeddingStore.create(root, dim, model={"ref": ref, "precision": prec},
                                  modalities=mods, exist_ok=True) as store:
        atomic_write_json(info_path, info)
        done, bad = store.done_keys(), set(info["bad"])
        todo = [i for i, s in positions if s.id not in done and s.id not in bad]
        resumed = len(done)
        if resumed:
            log.info("resuming: %d samples already embedded, %d to go", resumed, len(todo))
        res = _embed(store, src, todo, runner, info, info_path, batch_size=info["batch_size"],
                     shard_size=info["shard_size"], replace=False, progress=progress, on_batch=on_batch)
    res["executor"] = runner.describe()
    return _finish(root, info, res, max_memory, index_kind, {"resumed_from": resumed}, min_recall=min_recall)


def update_index(index_dir, *, workers: int = 0, max_memory=None, index_kind: str | None = None,
                 progress: bool | None = None, device=None, on_batch=None, include_deleted: bool = False,
                 engine: str | None = None, threads: int | None = None, allow_pipe: bool = False,
                 min_recall: float | None = None, token_merge=None, merge_method: str | None = None) -> dict:
    """Bring an index up to date with its source: embed new files, re-embed changed ones (size, mtime or
    caption differ; they keep their ids), remove deleted ones, retry files that failed before.

    Items removed with `delete_items` stay out (their keys are listed under "excluded" in index.json);
    `include_deleted` clears that list, so they come back (with new ids: an id is never reused).

    The source is the one index.json records: a file, so a `pipe:` command in it (webdataset shards read from
    a program's output) is refused unless `allow_pipe` accepts it (`clipforge.data.sources.trust`).
    `min_recall` (default: the one the index was built with) as in `build_index`. New and changed items are
    embedded with the token merging the index was built with (index.json); a `token_merge` / `merge_method`
    that differs from it is refused (every item of an index is embedded alike)."""
    if min_recall is not None:
        check_min_recall(min_recall)
    root = Path(index_dir)
    info = read_info(root)
    info_path = root / INFO_FILE
    if include_deleted:
        info["excluded"] = {}
    excluded = set(info.get("excluded", {}))
    merge = _token_merge(root, info, token_merge, merge_method)
    spec = accept_stored(info["source"], allow_pipe)
    src = open_source(spec, **info.get("source_options", {}))
    # one store transaction: readers see the index before this update or after it, never its removals alone
    # (a killed update publishes nothing; the next run starts over)
    job = functools.partial(EncodeJob, spec, info["model"], dict(info.get("source_options", {})),
                            precision=info["precision"], engine=engine or info.get("engine", "torch"),
                            threads=threads, token_merge=merge, device=device, workers=workers)
    # (the model loads once the store's modalities say whether captions are embedded too)
    with EmbeddingStore.open(root, writable=True) as store, store.transaction(), \
            create_executor("local", job(captions="text" in store.modalities)) as runner:
        old = store.metadata(["key", "size", "mtime", "caption"]).to_pylist()
        old = {r["key"]: r for r in old}
        positions = _keys_of(src)
        seen, todo, added, changed = set(), [], 0, 0
        retry = set(info["bad"])
        for i, s in positions:
            seen.add(s.id)
            if s.id in excluded:
                continue
            r = old.get(s.id)
            cap = s.captions[0] if s.captions else ""
            if r is None:
                todo.append(i)
                added += s.id not in retry
            elif (r["size"], r["mtime"], r["caption"]) != (s.meta.get("size"), s.meta.get("mtime"), cap):
                todo.append(i)
                changed += 1
        gone = [k for k in old if k not in seen]
        info["bad"] = {}  # failures are retried (and re-recorded) with everything else
        deleted = store.delete(gone)
        res = _embed(store, src, todo, runner, info, info_path, batch_size=info["batch_size"],
                     shard_size=info["shard_size"], replace=True, progress=progress, on_batch=on_batch)
    extra = {"added": added, "changed": changed, "deleted": deleted, "retried": len(retry & seen),
             "excluded": len(excluded & seen)}
    kind = index_kind or info.get("index", {}).get("requested_kind", "auto")
    unchanged = not (todo or deleted) and index_kind is None and max_memory is None and _index_current(root, info)
    if min_recall is None:
        min_recall = info.get("index", {}).get("min_recall", MIN_RECALL)
    return _finish(root, info, res, max_memory or info.get("max_memory"), kind, extra, rebuild=not unchanged,
                   min_recall=min_recall)


def _token_merge(root: Path, info: dict | None, token_merge, merge_method: str | None) -> dict | None:
    """The token merging an index embeds with, as index.json records it (None: exact): for a new index what was
    given; for an existing one (a resumed build, an update) the recorded one, and a given one that differs from
    it is refused in one line."""
    recorded = token_merge_setting(info.get("token_merge")) if info is not None else None
    if token_merge is None and merge_method is None:
        wanted = recorded
    else:
        if token_merge is None and recorded is None:
            raise UsageError("`merge_method` needs `token_merge` (the tokens merged per block)")
        wanted = token_merge_setting(recorded if token_merge is None else token_merge, merge_method)
    if info is not None and wanted != recorded:
        def said(tm):
            return tm.describe() if tm is not None else "none (exact)"

        raise UsageError(f"{root} was embedded with token merging {said(recorded)}, not {said(wanted)}: every "
                         "item of an index is embedded alike; give the same `token_merge` / `merge_method` (or "
                         "none: the recorded one is used), or build another index")
    return wanted.to_dict() if wanted is not None else None


def _finish(root: Path, info: dict, res: dict, max_memory, index_kind: str, extra: dict,
            rebuild: bool = True, min_recall: float = MIN_RECALL) -> dict:
    if rebuild and index_kind is not None:
        info["index"] = {**build_faiss(root, max_memory, index_kind, min_recall=min_recall),
                         "requested_kind": index_kind}
    with EmbeddingStore.open(root) as store:
        stats = store.stats()
    info.update({"status": "complete" if "index" in info else "embedded", "updated": time.time(),
                 "max_memory": max_memory,
                 "count": stats["live"], "deleted_rows": stats["deleted"],
                 "skipped": {"total": len(info["bad"]), "by_reason": _by_reason(info["bad"])},
                 "last_run": {"embedded": res["embedded"], "skipped_this_run": res["skipped"].total,
                              "seconds": round(res["seconds"], 3),
                              "images_per_s": round(res["images_per_s"], 2),
                              **({"executor": res["executor"]} if "executor" in res else {}), **extra}})
    atomic_write_json(root / INFO_FILE, info)
    if res["skipped"].total:
        log.warning("skipped %d unreadable files: %s", res["skipped"].total, dict(res["skipped"]))
    return {**{k: info.get(k) for k in ("source", "model", "precision", "token_merge", "count", "skipped",
                                         "index")},
            **info["last_run"], "out_dir": str(root), "skipped_samples": res["skipped"].as_dict()["samples"]}


def _index_current(root: Path, info: dict) -> bool:
    """Whether index.faiss exists and reflects the store's latest commit (see `sync.py`). index.json is
    written after index.faiss, so a generation recorded there is never newer than the file's; an index
    without one (merged from shards by hand) counts as current, as it always did."""
    if not (root / INDEX_FILE).exists():
        return False
    g = info.get("index", {}).get("store_generation")
    if g is None:
        return True
    with EmbeddingStore.open(root) as store:
        return int(g) == store.generation


def _by_reason(bad: dict) -> dict:
    out: dict = {}
    for reason in bad.values():
        out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


def index_info(index_dir) -> dict:
    """index.json plus the store's live counts (for `clipforge index info` and /stats)."""
    info = read_info(index_dir)
    with EmbeddingStore.open(index_dir) as store:
        info["store"] = store.stats()
    info["bad_files"] = len(info.pop("bad", {}))
    return info


__all__ = ["build_index", "update_index", "index_info"]
