"""Results in CLIP_benchmark's per-result JSON, so a clipforge run compares directly with `clip_benchmark eval`.

CLIP_benchmark (`clip_benchmark/cli.py`, `run`) dumps one file per (dataset, model, pretrained, language, task):
`{"dataset", "model", "pretrained", "task", "metrics", "language"}`, named
`{dataset}_{pretrained}_{model}_{language}_{task}.json` with `/` in the dataset as `_`. Here `model` is the
suite's display name, `pretrained` the model reference (`/` as `_`, so a path is one file name), `language`
"en", `task` CLIP_benchmark's task name, and `metrics` carries CLIP_benchmark's metric names where the task has
a counterpart (`CB_METRICS`): zero-shot classification acc1 / acc5 / mean_per_class_recall; retrieval
image_retrieval_recall@K (text -> image, clipforge's t2i_R@K) and text_retrieval_recall@K (i2t_R@K); linear
probe lp_acc1 / lp_acc5 / lp_mean_per_class_recall; image-caption selection image_acc / text_acc / acc
(Winoground-form sets: image / text / group score; SugarCrepe form: acc, with image_acc 1 as CLIP_benchmark
has it for one image per instance). Other tasks keep clipforge's task and metric names.
"""
from __future__ import annotations

import re
from pathlib import Path

from clipforge.atomic import atomic_write_json

__all__ = ["CB_TASKS", "clip_benchmark_result", "clip_benchmark_file_name", "write_clip_benchmark"]

CB_TASKS = {"zeroshot-classification": "zeroshot_classification", "zeroshot-retrieval": "zeroshot_retrieval",
            "linear-probe": "linear_probe", "image-caption-selection": "image_caption_selection",
            "captioning": "captioning", "zeroshot-multilabel": "zeroshot_classification"}
_CLASSIFY = {"top1": "acc1", "top5": "acc5", "mean_per_class_recall": "mean_per_class_recall"}
_RECALL = re.compile(r"^(i2t|t2i)_R@(\d+)$")


def _metrics(task: str, m: dict) -> dict:
    if task == "zeroshot-classification":
        return {cb: m[ours] for ours, cb in _CLASSIFY.items() if ours in m}
    if task == "linear-probe":
        return {f"lp_{cb}": m[ours] for ours, cb in _CLASSIFY.items() if ours in m}
    if task == "zeroshot-multilabel" and "mAP" in m:
        return {"mean_average_precision": m["mAP"]}
    if task == "zeroshot-retrieval":
        out = {}
        for k, v in m.items():
            hit = _RECALL.match(k)
            if hit:  # image retrieval = text queries (t2i); text retrieval = image queries (i2t)
                out[f"{'image' if hit.group(1) == 't2i' else 'text'}_retrieval_recall@{hit.group(2)}"] = v
        return out
    if task == "image-caption-selection":
        if "group_score" in m:
            return {"image_acc": m.get("image_score"), "text_acc": m.get("text_score"), "acc": m["group_score"]}
        return {"image_acc": 1.0, "text_acc": m.get("acc"), "acc": m.get("acc")}
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def clip_benchmark_result(record: dict, *, dataset: str, model: str, pretrained: str) -> dict:
    """One clipforge result record as the object CLIP_benchmark's `run` dumps."""
    task = record["task"]
    return {"dataset": dataset, "model": model, "pretrained": pretrained,
            "task": CB_TASKS.get(task, task.replace("-", "_")), "metrics": _metrics(task, record["metrics"]),
            "language": "en"}


def clip_benchmark_file_name(result: dict) -> str:
    """CLIP_benchmark's default output template, `{dataset}_{pretrained}_{model}_{language}_{task}.json`
    (every part made one file name: `/` as `_`)."""
    def part(key):
        return str(result[key]).replace("/", "_").replace("\\", "_")
    return f"{part('dataset')}_{part('pretrained')}_{part('model')}_{part('language')}_{part('task')}.json"


def write_clip_benchmark(results: list[dict], folder) -> list[Path]:
    """Write each CLIP_benchmark result object to its own file in `folder` (atomically); return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [atomic_write_json(folder / clip_benchmark_file_name(r), r, indent=None) for r in results]
