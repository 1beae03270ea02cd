"""Zero-shot classification of a labelled source with any registered zero-shot method: the one function both
`clipforge eval` and the training callback call, so the two always report the same number for the same
model and data."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from clipforge.data.sources import open_source
from clipforge.encode import as_encoder
from clipforge.errors import UsageError
from clipforge.evaluate.tasks import TASKS, EvalTask, TaskResult
from clipforge.metrics.classification import classification_metrics
from clipforge.registry import Option
from clipforge.zeroshot.classnames import resolve_classnames
from clipforge.zeroshot.methods import METHODS
from clipforge.zeroshot.templates import get_templates

__all__ = ["evaluate_zeroshot_classification", "ZeroShotClassification"]


def evaluate_zeroshot_classification(model, source, *, classnames=None, method: str = "mean",
                                     batch_size: int = 256, workers: int = 0, progress: Optional[bool] = None,
                                     features=None, **method_options) -> dict:
    """Build a zero-shot scorer from class names with `method` (any registered one; `method_options` are its
    own, e.g. templates=) and score every readable labelled image.

    `model`: a loaded model or an `Encoder`; `features`: precomputed `SourceFeatures` of `source` (labelled).
    Returns {"metrics": {top1, top5 (when >= 5 classes), mean_per_class_recall, n}, "num_classes",
    "skipped": {...}, "head_meta"}.
    """
    encoder = as_encoder(model)
    if isinstance(source, str):
        source = open_source(source)
    names = resolve_classnames(source, classnames)
    m = METHODS.create(method, **method_options)
    feats = features or encoder.encode_source(source, batch_size, workers=workers, require="label",
                                              progress=progress, desc="zero-shot")
    if len(feats) == 0:
        raise UsageError(f"{source.spec}: no readable labelled images")
    labels = feats.label_tensor()
    if int(labels.max()) >= len(names):
        raise UsageError(f"labels go up to {int(labels.max())} but only {len(names)} class names were given")
    scorer = m.build(encoder, names, test_features=feats.feats, batch_size=batch_size, workers=workers,
                     progress=progress)
    metrics = classification_metrics(scorer.scores(feats.feats).numpy(), labels.numpy(), ks=(1, 5))
    return {"metrics": metrics, "num_classes": len(names), "skipped": feats.skipped.as_dict(),
            "head_meta": dict(getattr(scorer, "meta", {}))}


@TASKS.register("zeroshot-classification")
class ZeroShotClassification(EvalTask):
    """Top-1 / top-5 accuracy and mean per-class recall of a zero-shot method on a labelled dataset."""

    @staticmethod
    def options():
        method = Option("method", str, "mean", help="zero-shot method (default mean)", choices=tuple(METHODS.names()))
        classnames = Option("classnames", str, help="class names file (default: the dataset's)")
        # the chosen method checks its own options (and which it requires)
        return (classnames, method, *(replace(o, required=False, default=None) for o in METHODS.all_options().values()))

    def run(self, encoder, dataset, ctx, *, classnames=None, method="mean", **method_options) -> TaskResult:
        templates = method_options.get("templates")
        if templates is None and dataset.templates is not None and "templates" in {
                o.name for o in METHODS.options(method)}:
            method_options["templates"] = templates = dataset.templates
        given = {k: v for k, v in method_options.items() if v is not None}
        res = evaluate_zeroshot_classification(encoder, dataset.source, classnames=classnames or dataset.classnames,
                                               method=method, batch_size=ctx.batch_size, workers=ctx.workers,
                                               progress=ctx.progress, **given)
        config = {"method": method,
                  "templates": templates if isinstance(templates, str) or templates is None
                  else f"{len(get_templates(templates))} templates",
                  "descriptions": given.get("descriptions"),
                  "classnames": classnames if isinstance(classnames, str) else None,
                  **{k: v for k, v in given.items() if k not in ("templates", "descriptions")}}
        return TaskResult(res["metrics"], config, {"num_classes": res["num_classes"], "skipped": res["skipped"]},
                          res["head_meta"].get("templates_hash"))
