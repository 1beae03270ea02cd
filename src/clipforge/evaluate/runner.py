"""The benchmark runner: one (model, task, dataset) -> one result record (optionally appended to JSONL).

    rec = run_eval("ckpt/final", "zeroshot-classification", "imagefolder:val", templates="photo",
                   out="results.jsonl")
    rec["metrics"]["top1"]

Tasks are a registry (`tasks.TASKS`), each declaring its own options, passed here as keyword arguments:
  zeroshot-classification  any zero-shot method (`method=`, and that method's options); the same function
                           the training callback calls, so both report the same accuracy
  zeroshot-retrieval       image<->text recall@1/5/10, mean/median rank (+ AP@k, nDCG@k, MRR with `cutoff`);
                           on a `clipforge index build` directory, from its stored vectors
  ranked-retrieval         text->image AP@k, nDCG@k, MRR and mAP (INQUIRE Fullrank), class or file queries
  linear-probe             CLIP-protocol probe on cached features
Datasets: see `datasets.py` (data-layer sources, CLIP_benchmark folders, Karpathy JSON).
"""
from __future__ import annotations

import os
import time
from typing import Optional

from clipforge.encode import Encoder
from clipforge.encode.engine import check_precision
from clipforge.errors import UsageError
from clipforge.evaluate.datasets import EvalDataset, open_eval_dataset
from clipforge.evaluate.index_retrieval import index_model_ref, is_index_dir, same_model_ref
from clipforge.evaluate.results import append_result, make_record, vet_results_file
from clipforge.evaluate.tasks import TASKS, EvalContext
from clipforge.models import load_model

__all__ = ["run_eval"]


def _model_name(model, model_name: Optional[str]) -> str:
    if model_name:
        return model_name
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    cfg = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    return str(getattr(cfg, "name", None) or type(model).__name__)


def run_eval(model, task: str, dataset, *, model_name: Optional[str] = None, split: Optional[str] = None,
             image_root: Optional[str] = None, seed: int = 0, batch_size: int = 256, workers: int = 0,
             device=None, precision: str = "fp32", progress: Optional[bool] = None, out=None, **options) -> dict:
    """Evaluate `model` (a reference load_model accepts, a loaded model, or an `Encoder`) on one task.

    `options` are the task's own (`TASKS.options(task)`; e.g. templates=, method=, k_shot=); one the task
    does not declare is an error. `dataset` may be an index directory (`clipforge index build`) for a task
    that accepts one (zeroshot-retrieval): its stored embeddings are scored as they are (no re-embedding, so
    `model` may be None; when given, its reference must be the one the index was built with).

    A task that yields several records (few-shot: one per method and k) returns {"model", "dataset", "task",
    "records": [...]} and appends every record to `out`. Otherwise returns the result record
    (`evaluate.results.make_record`): model, dataset, task, metrics, config,
    config_hash, templates_hash, versions, time, elapsed_s, plus the task's diagnostics (num_classes,
    skipped, ...). `precision`: "fp32" (default; what the training callback uses), "bf16" / "fp16" (the
    weights are cast in place for inference), or "auto". With `out`, the record is also appended there.
    """
    spec = TASKS.get(task)()
    opts = TASKS.check(task, options)
    if batch_size < 1 or workers < 0:
        raise UsageError(f"`batch_size` must be >= 1 and `workers` >= 0 (got {batch_size}, {workers})")
    if not isinstance(model, Encoder):  # a built encoder has its engine's precision already
        check_precision("torch", precision)
    if out is not None:
        vet_results_file(out)  # refused before the evaluation runs
    ctx = EvalContext(batch_size=batch_size, workers=workers, seed=seed, progress=progress, image_root=image_root)
    t0 = time.perf_counter()
    if is_index_dir(dataset):
        if not spec.accepts_index:
            accept = [n for n in TASKS.names() if TASKS.get(n).accepts_index]
            raise UsageError(f"{dataset} is a clipforge index: it can be evaluated with `task` "
                             f"{'/'.join(accept)} only (it stores embeddings, not labels or pixels), not {task}")
        for name, value in (("split", split), ("image_root", image_root)):
            if value is not None:
                raise UsageError(f"`{name}` does not apply to an index directory ({dataset})")
        index_model = index_model_ref(dataset)
        if model is not None or model_name:
            given = _model_name(model, model_name)
            if not same_model_ref(given, index_model):
                raise UsageError(f"`model` {given!r} differs from the model the index {dataset} was built with "
                                 f"({index_model!r}); an index is evaluated with its own embeddings: pass that "
                                 "model or omit it")
        res = spec.run_index(dataset, ctx, **opts)
        extra = dict(res.extra)
        name, ds_name = extra.pop("model"), str(dataset)
        config = {"task": task, "dataset": ds_name, "split": None, **res.config}
    else:
        if model is None:
            raise UsageError(f"`task` {task} on {dataset!r} needs a `model` (only an index directory, evaluated "
                             "with zeroshot-retrieval, carries its own embeddings)")
        name = _model_name(model, model_name)
        if isinstance(model, (str, os.PathLike)):
            model = load_model(str(model))
        encoder = model if isinstance(model, Encoder) else Encoder.from_model(model, device=device,
                                                                                precision=precision)
        if spec.opens_dataset:  # the task reads its own format (e.g. a selection JSONL)
            if split is not None:
                raise UsageError(f"`split` does not apply to task {task} (its dataset is one file)")
            ds = EvalDataset(None, str(dataset))
        else:
            ds = open_eval_dataset(dataset, split=split, image_root=image_root)
        ds_name = ds.name
        t0 = time.perf_counter()
        res = spec.run(encoder, ds, ctx, **opts)
        extra = res.extra
        merged = getattr(encoder.engine, "token_merge", None)  # approximate embeddings: the record says so
        config = {"task": task, "dataset": ds.name, "split": ds.split, "batch_size": batch_size, "seed": seed,
                  "precision": encoder.precision, **({"token_merge": merged.to_dict()} if merged else {}),
                  **res.config}
    elapsed = time.perf_counter() - t0
    recs = [make_record(name, ds_name, task, part.metrics, config={**config, **part.config},
                        templates_hash=part.templates_hash or res.templates_hash, elapsed_s=elapsed,
                        **{**extra, **(part.extra if res.parts else {})}) for part in (res.parts or [res])]
    if out is not None:
        for rec in recs:
            append_result(out, rec)
    if len(recs) == 1 and not res.parts:
        return recs[0]
    return {"model": name, "dataset": ds_name, "task": task, "records": recs}
