"""The benchmark runner: one (model, task, dataset) -> one result record (optionally appended to JSONL).

    rec = run_eval("ckpt/final", "zeroshot-classification", "imagefolder:val", templates="photo",
                   out="results.jsonl")
    rec["metrics"]["top1"]

Tasks:
  zeroshot-classification  `evaluate_zeroshot_classification` (the same function the training callback
                           calls, so both report the same accuracy for the same model, data and templates)
  zeroshot-retrieval       image<->text recall@1/5/10, mean/median rank (`zeroshot_retrieval.py`); on a
                           `clipforge index build` directory, from its stored vectors (`index_retrieval.py`)
  linear-probe             CLIP-protocol probe on cached features (`linear_probe_task.py`)
Datasets: see `datasets.py` (data-layer sources, CLIP_benchmark folders, Karpathy JSON).
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from clipforge.errors import UsageError

__all__ = ["TASKS", "run_eval"]

TASKS = ("zeroshot-classification", "zeroshot-retrieval", "linear-probe")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TASK_OPTIONS = {  # options that only make sense for some tasks: a stray one is an error, not ignored
    "templates": ("zeroshot-classification",), "classnames": ("zeroshot-classification",),
    "method": ("zeroshot-classification",), "descriptions": ("zeroshot-classification",),
    "k_shot": ("linear-probe",), "probe_options": ("linear-probe",), "test_dataset": ("linear-probe",),
    "test_fraction": ("linear-probe",),
}
_FLAG = {"k_shot": "--k-shot", "test_dataset": "--test-dataset", "test_fraction": "--test-fraction"}


def _model_name(model, model_name: Optional[str]) -> str:
    if model_name:
        return model_name
    if isinstance(model, str):
        return model
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "name", None) or type(model).__name__)


def run_eval(model, task: str, dataset, *, model_name: Optional[str] = None, templates=None, classnames=None,
             method: Optional[str] = None, descriptions=None, k_shot: Optional[int] = None, test_dataset=None,
             test_fraction: Optional[float] = None, split: Optional[str] = None,
             image_root: Optional[str] = None, seed: int = 0, batch_size: int = 256, workers: int = 0,
             device=None, precision: str = "fp32", progress: Optional[bool] = None,
             probe_options: Optional[dict] = None, out=None) -> dict:
    """Evaluate `model` (a reference load_model accepts, or a loaded model) on one task and dataset.

    `dataset` may be an index directory (`clipforge index build`) for task "zeroshot-retrieval": its stored
    image and caption embeddings are scored as they are (no re-embedding, so `model` may be None; when given,
    its reference must be the one the index was built with). See `_run_index_eval`.

    Returns the result record (`evaluate.results.make_record`): model, dataset, task, metrics, config,
    config_hash, templates_hash, versions, time, elapsed_s, plus num_classes / skipped diagnostics.
    `probe_options`: linear probe solver settings (`fit_linear_probe`: c_grid, refine_steps, max_iter).
    `precision`: "fp32" (default; what the training callback uses) or "bf16"/"fp16": the model's weights are
    cast (in place) for inference (faster on CPUs with bf16 units; numbers may differ slightly from fp32).
    With `out`, the record is also appended to that JSONL file.
    """
    from clipforge.evaluate.datasets import is_clip_benchmark_dir, open_eval_dataset
    from clipforge.evaluate.index_retrieval import is_index_dir
    from clipforge.evaluate.results import append_result, make_record

    if task not in TASKS:
        raise UsageError(f"unknown --task {task!r}; choose from {', '.join(TASKS)}")
    given = {"templates": templates, "classnames": classnames, "method": method, "descriptions": descriptions,
             "k_shot": k_shot, "test_dataset": test_dataset, "test_fraction": test_fraction,
             "probe_options": probe_options}
    for name, value in given.items():
        if value is not None and task not in _TASK_OPTIONS[name]:
            raise UsageError(f"{_FLAG.get(name, '--' + name.replace('_', '-'))} does not apply to --task {task} "
                             f"(only to {', '.join(_TASK_OPTIONS[name])})")
    if batch_size < 1 or workers < 0:
        raise UsageError(f"--batch-size must be >= 1 and --workers >= 0 (got {batch_size}, {workers})")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if is_index_dir(dataset):
        # nothing is embedded, so batch_size / workers / device / precision do not matter here
        return _run_index_eval(model, model_name, task, dataset, split=split, image_root=image_root, out=out)
    if model is None:
        raise UsageError(f"--task {task} on {dataset!r} needs a --model (only an index directory, evaluated "
                         "with --task zeroshot-retrieval, carries its own embeddings)")
    name = _model_name(model, model_name)
    if isinstance(model, str):
        from clipforge.models import load_model

        model = load_model(model, device=device)
    elif device is not None:
        model = model.to(device)
    if precision != "fp32":
        model = model.to(PRECISIONS[precision])
    model.eval()
    ds = open_eval_dataset(dataset, split=split, image_root=image_root)
    config = {"task": task, "dataset": ds.name, "split": ds.split, "batch_size": batch_size, "seed": seed,
              "precision": precision}
    common = dict(batch_size=batch_size, workers=workers, progress=progress)
    templates_hash = None
    t0 = time.perf_counter()
    if task == "zeroshot-classification":
        from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
        from clipforge.zeroshot.templates import get_templates

        tmpl = templates if templates is not None else ds.templates
        res = evaluate_zeroshot_classification(model, ds.source, classnames=classnames or ds.classnames,
                                               templates=tmpl, method=method or "mean",
                                               descriptions=descriptions, **common)
        templates_hash = res["head_meta"].get("templates_hash")
        config.update(method=method or "mean", templates=tmpl if isinstance(tmpl, str) or tmpl is None
                      else f"{len(get_templates(tmpl))} templates", descriptions=descriptions,
                      classnames=classnames if isinstance(classnames, str) else None)
        extra = {"num_classes": res["num_classes"], "skipped": res["skipped"]}
    elif task == "zeroshot-retrieval":
        from clipforge.evaluate.zeroshot_retrieval import evaluate_zeroshot_retrieval

        res = evaluate_zeroshot_retrieval(model, ds.source, **common)
        extra = {"num_images": res["num_images"], "num_texts": res["num_texts"], "skipped": res["skipped"]}
    else:
        from clipforge.evaluate.linear_probe_task import evaluate_linear_probe

        train_ds, test_ds = ds, None
        if test_dataset is not None:
            test_ds = open_eval_dataset(test_dataset, split=None, image_root=image_root)
        elif test_fraction is None and isinstance(dataset, str) and is_clip_benchmark_dir(dataset):
            # CLIP_benchmark folder: train on its "train" split, test on the chosen (default "test") one
            if ds.split == "train":
                raise UsageError("linear probe on the 'train' split needs --test-dataset or --test-fraction")
            train_ds, test_ds = open_eval_dataset(dataset, split="train"), ds
        n_cls = len(ds.classnames) if ds.classnames else None
        res = evaluate_linear_probe(model, train_ds.source, None if test_ds is None else test_ds.source,
                                    test_fraction=test_fraction, k_shot=k_shot, seed=seed, num_classes=n_cls,
                                    probe_options=probe_options, **common)
        config.update(k_shot=k_shot, test_fraction=test_fraction, probe_options=probe_options,
                      train_dataset=train_ds.source.spec, test_dataset=None if test_ds is None else test_ds.name)
        extra = {"num_classes": res["num_classes"], "skipped": res["skipped"]}
    elapsed = time.perf_counter() - t0
    rec = make_record(name, ds.name, task, res["metrics"], config=config, templates_hash=templates_hash,
                      elapsed_s=elapsed, **extra)
    if out is not None:
        append_result(out, rec)
    return rec


def _run_index_eval(model, model_name: Optional[str], task: str, index_dir, *, split, image_root,
                    out) -> dict:
    """zeroshot-retrieval from an index's stored vectors; the record names the index's model and precision.

    The model check compares references (`model_name`, a reference string, or a loaded model's config name)
    with the one in index.json; the weights of a loaded model are not compared.
    """
    from clipforge.evaluate.index_retrieval import evaluate_index_retrieval, index_model_ref, same_model_ref
    from clipforge.evaluate.results import append_result, make_record

    if task != "zeroshot-retrieval":
        raise UsageError(f"{index_dir} is a clipforge index: it can be evaluated with --task zeroshot-retrieval "
                         f"only (it stores embeddings, not labels or pixels), not --task {task}")
    for flag, value in (("--split", split), ("--image-root", image_root)):
        if value is not None:
            raise UsageError(f"{flag} does not apply to an index directory ({index_dir})")
    index_model = index_model_ref(index_dir)
    if model is not None or model_name:
        given = _model_name(model, model_name)
        if not same_model_ref(given, index_model):
            raise UsageError(f"--model {given!r} differs from the model the index {index_dir} was built with "
                             f"({index_model!r}); an index is evaluated with its own embeddings: pass that "
                             "model or omit --model")
    t0 = time.perf_counter()
    res = evaluate_index_retrieval(index_dir)
    elapsed = time.perf_counter() - t0
    config = {"task": task, "dataset": str(index_dir), "split": None, "source": "index",
              "index_precision": res["precision"], "captions_per_image": res["captions_per_image"]}
    rec = make_record(res["model"], str(index_dir), task, res["metrics"], config=config, elapsed_s=elapsed,
                      num_images=res["num_images"], num_texts=res["num_texts"],
                      captions_per_image=res["captions_per_image"], source_captions=res["source_captions"],
                      dropped_captions=res["dropped_captions"], skipped=res["skipped"])
    if out is not None:
        append_result(out, rec)
    return rec
