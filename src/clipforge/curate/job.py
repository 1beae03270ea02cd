"""The resumable scoring job: `score_source(source, model, out)` -> one parquet file of `score.py` rows.

Work is cut into parts of `part_size` source positions, each read in batches by a `clipforge.scale` executor
(decoding workers, skips counted) and scored by `score_batch` where the batch was encoded (`EncodeJob.after`). A
finished part is written atomically to `<out>.parts/part-NNNNNN.parquet`, then the job manifest
(`<out>.parts/manifest.json`) is rewritten atomically to list it. A job killed at any moment therefore leaves
only whole parts, and only the parts the manifest lists count: re-running the same call re-plans the same parts
from the source, skips those listed and scores the rest (a part written but not yet listed is scored again and
overwritten), so the result has every sample exactly once. When every part is done they are concatenated in order
into `out` (atomically, with the job's description in the file's metadata) and the parts folder is removed.

Re-running on a finished `out` with the same source, model and options returns its summary without work; other
settings are refused unless `overwrite=True`, and so is a file at `out` that is not a scores file (a folder, link,
device or FIFO there is refused always: `output_dirs`).

`executor="local"` (the default) runs that here; `executor="ray"` (options as `clipforge.scale.RayExecutor`
declares them: address, num_workers, ...) scores on a Ray cluster: one part is one unit of work, each actor
decodes, inspects, encodes and scores its part's batches itself (the same job: `EncodeJob.inspect` /
`EncodeJob.after` with `image_facts` and `score_batch`), only the rows travel back, in plan order, and they
are committed here exactly as above, so the file equals the local run's (same rows, same skips) and a job
killed under one executor resumes under either.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.atomic import atomic_write_json, atomic_write_path
from clipforge.curate.facts import image_facts
from clipforge.curate.lang import resolve_lang
from clipforge.curate.score import schema_for, score_batch
from clipforge.data.sources import open_source
from clipforge.encode import as_encoder
from clipforge.errors import ClipforgeError, UsageError
from clipforge.output_dirs import OutputFile
from clipforge.progress import Progress
from clipforge.scale import EXECUTORS, EncodeJob, create_executor

__all__ = ["score_source", "read_scores", "scores_info", "FORMAT", "VERSION"]

log = logging.getLogger("clipforge.curate")
FORMAT, VERSION = "clipforge-curate-scores", 1
META_KEY = b"clipforge_curate"


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _source_of(source, source_options: Optional[dict]):
    if isinstance(source, str):
        return open_source(source, **(source_options or {}))
    if source_options:
        raise UsageError("`source_options` applies only when `source` is a spec string")
    return source


def _model_ref(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(Path(model).resolve()) if Path(model).is_dir() else str(model)
    return f"in-memory:{type(getattr(model, 'model', model)).__name__}"  # the caller keeps it the same


def _n_positions(source) -> int:
    try:
        return len(source)
    except TypeError:  # a streaming source: one pass without decoding to count its samples
        return sum(1 for _ in source)


def scores_info(path) -> dict:
    """The job description stored in a scores file (source, model, options, counts)."""
    if not Path(path).is_file():
        raise UsageError(f"scores file {path} does not exist (write one with curate score)")
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise ClipforgeError(f"cannot read scores file {path}: {e}") from None
    if META_KEY not in meta:
        raise UsageError(f"{path} is not a clipforge scores file (write one with curate score)")
    return json.loads(meta[META_KEY])


def _is_scores_file(path) -> bool:
    try:
        scores_info(path)
    except ClipforgeError:
        return False
    return True


def read_scores(path, columns: Optional[list[str]] = None) -> pa.Table:
    """A scores file as an Arrow table (all columns, or those named)."""
    scores_info(path)
    return pq.read_table(path, columns=columns)


def score_source(source, model, out, *, batch_size: int = 256, part_size: int = 4096, workers: int = 0,
                 device=None, precision: str = "auto", texts: bool = True, lang="auto", embeddings: bool = True,
                 pixel_features: bool = True, overwrite: bool = False, progress: Optional[bool] = None,
                 source_options: Optional[dict] = None,
                 on_part: Optional[Callable[[dict], None]] = None, executor: str = "local",
                 executor_options: Optional[dict] = None, engine: str = "torch",
                 threads: Optional[int] = None) -> dict:
    """Score every pair of `source` (a spec string or an opened Source) with `model` (a model reference, or an
    `Encoder` / loaded model used as it is) into the parquet file `out`; resumable (see the module docstring).

    texts: score captions (False: image facts and embeddings only). lang: "auto" | True | False (a language
    guess per caption, with py3langid). embeddings: keep each image's embedding (de-duplication reuses them).
    pixel_features: keep a model-free pixel descriptor per image (de-duplication's default features).
    executor: "local" (this process) or "ray" (`executor_options`; needs `model` as a reference, and `source`
    as a spec string when it needs `source_options`); either runs the model with the inference `engine` and
    `threads`. Returns the job summary.
    """
    if batch_size < 1 or part_size < 1 or workers < 0:
        raise UsageError(f"need `batch_size` >= 1, `part_size` >= 1, `workers` >= 0; got {batch_size}, "
                         f"{part_size}, {workers}")
    out = Path(out)
    if out.suffix != ".parquet":
        raise UsageError(f"`out` must be a .parquet file, got {str(out)!r}")
    EXECUTORS.check(executor, executor_options or {})  # a misplaced option fails before any work
    if executor != "local" and not isinstance(model, (str, os.PathLike)):
        raise UsageError(f"executor {executor!r} loads the model in its workers: pass a model reference (a name "
                         "or a path), not a loaded model")
    lang = resolve_lang(lang)
    src = _source_of(source, source_options)
    job = {"format": FORMAT, "version": VERSION, "source": src.spec, "model": _model_ref(model),
           "options": {"texts": bool(texts), "lang": lang, "embeddings": bool(embeddings),
                       "pixel_features": bool(pixel_features)}}
    same = ("source", "model", "options")
    output = OutputFile(overwrite=overwrite, param="out", owned=_is_scores_file)
    if output.vet(out)[1] == "same":  # an earlier scores file: done already, or refused / redone
        done = scores_info(out)
        if not overwrite and all(done.get(k) == job[k] for k in same):
            return {**done, "out": str(out), "resumed_from": done.get("n_positions"), "scored_now": 0}
        if not overwrite:
            raise UsageError(f"{out} holds scores of {done.get('source')!r} with {done.get('model')!r} "
                             f"({done.get('options')}); choose another `out` or pass `overwrite`")
    parts = _parts_dir(out)
    manifest_path = parts / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if manifest is not None and (overwrite or any(manifest.get(k) != job[k] for k in same)):
        if not overwrite:
            raise UsageError(f"{parts} holds an unfinished job on {manifest.get('source')!r} with "
                             f"{manifest.get('model')!r}; finish it, choose another `out` or pass `overwrite`")
        shutil.rmtree(parts)
        manifest = None
    precision = (manifest or {}).get("precision", precision)  # a resumed job encodes exactly like the first run
    opts = job["options"]
    # each batch is decoded, inspected, encoded and scored where the executor runs it; only the rows come back
    encode = EncodeJob(src.spec, job["model"], dict(source_options or {}), precision=precision, engine=engine,
                       threads=threads, device=device, workers=workers,
                       inspect=functools.partial(image_facts, pixel_features=opts["pixel_features"]),
                       after=functools.partial(score_batch, texts=opts["texts"], lang=opts["lang"],
                                               embeddings=opts["embeddings"], pixel_features=opts["pixel_features"]))
    loaded = {} if isinstance(model, (str, os.PathLike)) else {"encoder": as_encoder(model)}
    runner = create_executor(executor, encode, **loaded, **(executor_options or {}))
    try:
        return _start(out, src, job, manifest, manifest_path, parts, runner, progress, on_part, batch_size,
                      part_size, output)
    finally:
        runner.close()


def _start(out, src, job, manifest, manifest_path, parts, runner, progress, on_part, batch_size, part_size,
           output) -> dict:
    """The rest of `score_source`, once the executor has the model loaded (here or in its workers)."""
    n = _n_positions(src)
    if manifest is None:
        manifest = {**job, "precision": runner.precision, "embed_dim": runner.embed_dim, "n_positions": n,
                    "batch_size": batch_size, "part_size": part_size, "done": {},
                    "open_skipped": src.open_skipped.as_dict(), "created": time.time()}
    elif manifest["n_positions"] != n:
        raise UsageError(f"{src.spec} has {n} samples now, {manifest['n_positions']} when this job started; "
                         f"it changed: pass `overwrite` to start again")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts.mkdir(exist_ok=True)
    atomic_write_json(manifest_path, manifest)
    resumed = sum(v["positions"] for v in manifest["done"].values())
    if resumed:
        log.info("resuming %s: %d of %d positions already scored", out, resumed, n)
    t0, scored = time.perf_counter(), _run_parts(src, runner, manifest, manifest_path, parts, progress, on_part)
    res = _finish(out, parts, manifest, resumed, scored, time.perf_counter() - t0, output)
    return {**res, "executor": runner.describe()}


def _place_skips(table: pa.Table, planned) -> pa.Table:
    """The positions of a batch's unusable images, placed as `score_batch(..., planned=...)` places them: for a
    batch scored where it was encoded (an executor's `after` sees the batch, not the plan it was read with)."""
    reasons, pos = table.column("skip_reason").to_pylist(), table.column("position").to_pylist()
    rows = [i for i, r in enumerate(reasons) if r is not None]
    read = {p for p, r in zip(pos, reasons) if r is None}
    missing = [p for p in planned if p not in read]
    if not rows or len(missing) != len(rows):  # skips are recorded in plan order
        return table
    for i, p in zip(rows, missing):
        pos[i] = p
    k = table.schema.get_field_index("position")
    return table.set_column(k, table.schema.field(k), pa.array(pos, pa.int64()))


def _run_parts(src, runner, manifest, manifest_path: Path, parts: Path, progress, on_part) -> int:
    n, ps, bs = manifest["n_positions"], manifest["part_size"], manifest["batch_size"]
    opts = manifest["options"]
    todo = [p for p in range(-(-n // ps)) if str(p) not in manifest["done"]]
    plan, part_of = [], []  # batches never straddle parts, so a resume re-forms the same batches
    for p in todo:
        positions = list(range(p * ps, min(n, (p + 1) * ps)))
        for i in range(0, len(positions), bs):
            plan.append(positions[i:i + bs])
            part_of.append(p)
    schema = schema_for(lang=opts["lang"], embed_dim=manifest["embed_dim"] if opts["embeddings"] else None,
                        pixel_features=opts["pixel_features"])
    pending: list[pa.Table] = []
    scored = 0
    # each batch already scored where it was encoded (the job's `after`)
    tables = (_place_skips(t, plan[b]) for b, t in enumerate(
        runner.iter_batches(plan, part_of, source=src, progress=False)))
    bar = Progress(sum(len(g) for g in plan), desc="scoring", unit="img", progress=progress)
    with bar:
        for b, table in enumerate(tables):
            bar.update(len(plan[b]))
            pending.append(table)
            if b + 1 == len(plan) or part_of[b + 1] != part_of[b]:
                p = part_of[b]
                table = pa.concat_tables(pending).cast(schema) if pending else schema.empty_table()
                name = f"part-{p:06d}.parquet"
                atomic_write_path(parts / name, lambda tmp: pq.write_table(table, tmp))  # noqa: B023
                count = min(n, (p + 1) * manifest["part_size"]) - p * manifest["part_size"]
                manifest["done"][str(p)] = {"file": name, "positions": count, "rows": table.num_rows,
                                            "skipped": int(sum(1 for r in table.column("skip_reason").to_pylist()
                                                               if r is not None))}
                atomic_write_json(manifest_path, manifest)  # the part counts only from here on
                scored += count
                pending = []
                if on_part is not None:
                    on_part({"part": p, "positions": count, "done": len(manifest["done"]),
                             "parts": -(-n // manifest["part_size"])})
    return scored


def _finish(out: Path, parts: Path, manifest: dict, resumed: int, scored: int, seconds: float,
            output: OutputFile) -> dict:
    order = sorted(manifest["done"], key=int)
    tables = [pq.read_table(parts / manifest["done"][p]["file"]) for p in order]
    table = pa.concat_tables(tables) if tables else pa.table({})
    skip = table.column("skip_reason").to_pylist() if table.num_rows else []
    by_reason: dict[str, int] = {}
    for r in skip:
        if r is not None:
            by_reason[r] = by_reason.get(r, 0) + 1
    scored_rows = table.column("score").drop_null() if table.num_rows else pa.array([], pa.float32())
    info = {k: manifest[k] for k in ("format", "version", "source", "model", "options", "precision", "embed_dim",
                                     "n_positions", "batch_size", "part_size", "open_skipped")}
    info.update({"rows": table.num_rows, "pairs": len(scored_rows),
                 "samples": len(set(table.column("id").to_pylist())) if table.num_rows else 0,
                 "skipped": {"total": sum(by_reason.values()), "by_reason": dict(sorted(by_reason.items()))},
                 "finished": time.time()})
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps(info).encode()
    table = table.replace_schema_metadata(meta)
    atomic_write_path(out, lambda tmp: pq.write_table(table, tmp), output=output)
    shutil.rmtree(parts, ignore_errors=True)
    return {**info, "out": str(out), "resumed_from": resumed, "scored_now": scored, "seconds": round(seconds, 3)}
