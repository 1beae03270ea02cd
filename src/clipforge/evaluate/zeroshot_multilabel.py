"""The `zeroshot-multilabel` task: zero-shot scores of every class for every image, scored as multilabel retrieval.

Each image's true classes come from its record's metadata (a manifest's extra columns): `label_keys` names one
column holding a list of class names or indices (default "labels": `{"image": ..., "labels": ["cat", "sofa"]}`),
or several columns whose values are each one class (`label_keys="color,shape"` on the counting demo: the image
of three red circles is positive for "red" and "circle"). Class names come from `classnames` (a file); without
one, the sorted distinct names found (labels given as names) or the dataset's own (labels given as indices). The zero-shot method (`method`, any registered one, and its
options) scores all classes for all images; per class c, AP(c) is the average precision of ranking the images
by their class-c score (`metrics.classification.multilabel_map`, scikit-learn's step-wise AP), and `mAP` the
macro mean over the classes with at least one positive (VOC / COCO multilabel protocol). Reported: `mAP`,
`AP/<class>` for each, `n` (images), `num_positive_classes`. Images with none of the keys are skipped and
counted.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from clipforge.encode import as_encoder
from clipforge.errors import UsageError
from clipforge.evaluate.tasks import TASKS, EvalTask, TaskResult
from clipforge.metrics.classification import multilabel_map
from clipforge.registry import Option
from clipforge.zeroshot.classnames import resolve_classnames
from clipforge.zeroshot.methods import METHODS

__all__ = ["evaluate_zeroshot_multilabel", "ZeroShotMultilabel", "label_sets"]


def label_sets(meta: list[dict], keys: list[str]) -> list[list]:
    """Per record, its class values (names or indices) under `keys` (module doc); None where it has none."""
    out = []
    for m in meta:
        if len(keys) == 1:
            v = m.get(keys[0])
            vals = v if isinstance(v, list) else ([] if v is None else [v])
        else:
            vals = [m[k] for k in keys if m.get(k) is not None]
        out.append([v for v in vals if isinstance(v, (str, int)) and not isinstance(v, bool)] or None)
    return out


def evaluate_zeroshot_multilabel(model, source, *, label_keys="labels", classnames=None, method: str = "mean",
                                 batch_size: int = 256, workers: int = 0, progress=None, **method_options) -> dict:
    """-> {"metrics": {mAP, AP/<class>..., n, num_positive_classes}, "num_classes", "skipped"}."""
    encoder = as_encoder(model)
    keys = [k.strip() for k in label_keys.split(",") if k.strip()] if isinstance(label_keys, str) else list(label_keys)
    if not keys:
        raise UsageError("`label_keys` is empty")
    feats = encoder.encode_source(source, batch_size, workers=workers, progress=progress, desc="multilabel")
    sets = label_sets(feats.meta, keys)
    keep = [i for i, s in enumerate(sets) if s]
    skipped = feats.skipped.copy()
    for i, s in enumerate(sets):
        if not s:
            skipped.add(feats.ids[i], "no_label")
    if not keep:
        raise UsageError(f"{source.spec}: no image has labels under {', '.join(keys)}")
    found = sorted({str(v) for i in keep for v in sets[i] if isinstance(v, str)})
    # a file given; else the names found (labels given as names); else the source's own (labels as indices)
    names = resolve_classnames(source, classnames) if classnames is not None or not found else found
    index = {c: i for i, c in enumerate(names)}
    y = np.zeros((len(keep), len(names)), dtype=np.int64)
    for row, i in enumerate(keep):
        for v in sets[i]:
            j = v if isinstance(v, int) else index.get(v)
            if j is None or not 0 <= j < len(names):
                raise UsageError(f"{feats.ids[i]}: label {v!r} is not one of the {len(names)} class names")
            y[row, j] = 1
    scorer = METHODS.create(method, **method_options).build(encoder, names, test_features=feats.feats[keep],
                                                            batch_size=batch_size, workers=workers, progress=progress)
    scores = scorer.scores(feats.feats[keep]).numpy()
    mean_ap, per_class = multilabel_map(y, scores)
    metrics = {"mAP": float(mean_ap)}
    for c, ap in zip(names, per_class):
        metrics[f"AP/{c}"] = None if np.isnan(ap) else float(ap)
    metrics.update(n=len(keep), num_positive_classes=int((y.sum(0) > 0).sum()))
    return {"metrics": metrics, "num_classes": len(names), "skipped": skipped.as_dict()}


@TASKS.register("zeroshot-multilabel")
class ZeroShotMultilabel(EvalTask):
    """Multilabel zero-shot classification: per-class AP and their mean (mAP) over images with several labels."""

    @staticmethod
    def options():
        keys = Option("label_keys", str, "labels", help="multilabel: the record column holding a list of classes, "
                                                         "or several columns each holding one (default labels)")
        method = Option("method", str, "mean", help="zero-shot method (default mean)", choices=tuple(METHODS.names()))
        classnames = Option("classnames", str, help="class names file (default: the dataset's)")
        return (keys, classnames, method,
                *(replace(o, required=False, default=None) for o in METHODS.all_options().values()))

    def run(self, encoder, dataset, ctx, *, label_keys="labels", classnames=None, method="mean",
            **method_options) -> TaskResult:
        given = {k: v for k, v in method_options.items() if v is not None}
        if "templates" not in given and dataset.templates is not None:
            given["templates"] = dataset.templates
        res = evaluate_zeroshot_multilabel(encoder, dataset.source, label_keys=label_keys,
                                           classnames=classnames, method=method,
                                           batch_size=ctx.batch_size, workers=ctx.workers, progress=ctx.progress,
                                           **given)
        t = given.get("templates")
        config = {"label_keys": label_keys, "method": method,
                  "templates": t if isinstance(t, str) or t is None else f"{len(t)} templates",
                  **{k: v for k, v in given.items() if k != "templates"}}
        return TaskResult(res["metrics"], config, {"num_classes": res["num_classes"], "skipped": res["skipped"]})
