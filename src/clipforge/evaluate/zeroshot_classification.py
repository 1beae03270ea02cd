"""Zero-shot classification of a labelled source: the one function both `clipforge eval` and the training
callback call, so the two always report the same number for the same model and data."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from clipforge.errors import UsageError


def resolve_classnames(source, classnames: Optional[Union[Sequence[str], str]] = None):
    """Class names from a list, a file (one per line, or JSON list), or the source itself."""
    if classnames is None:
        names = getattr(source, "classnames", None)
        if not names:
            raise UsageError(f"{source.spec}: the source has no class names; pass classnames (a list or a file)")
        return list(names)
    if isinstance(classnames, (str, Path)):
        p = Path(classnames)
        if not p.is_file():
            raise UsageError(f"class-names file not found: {p}")
        text = p.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            import json

            return [str(c) for c in json.loads(text)]
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    return [str(c) for c in classnames]


def evaluate_zeroshot_classification(model, source, *, classnames=None, templates=None, method: str = "mean",
                                     descriptions=None, batch_size: int = 256, workers: int = 0,
                                     progress: Optional[bool] = None, features=None) -> dict:
    """Build a zero-shot head from class names × templates and score every readable image.

    Returns {"metrics": {top1, top5 (when >= 5 classes), mean_per_class_recall, n}, "num_classes",
    "skipped": {reason: count}, "head_meta"}.
    """
    from clipforge.data.sources import open_source
    from clipforge.evaluate.features import labelled_image_features
    from clipforge.metrics.classification import classification_metrics
    from clipforge.zeroshot.classifier import build_classifier, model_text_encoder

    if isinstance(source, str):
        source = open_source(source)
    names = resolve_classnames(source, classnames)
    head = build_classifier(model_text_encoder(model), names, templates, method=method,
                            descriptions=descriptions, progress=progress)
    feats = features or labelled_image_features(model, source, batch_size=batch_size, workers=workers,
                                                progress=progress, desc="zero-shot")
    if feats.feats.shape[0] == 0:
        raise UsageError(f"{source.spec}: no readable labelled images")
    if int(feats.labels.max()) >= len(names):
        raise UsageError(f"labels go up to {int(feats.labels.max())} but only {len(names)} class names were given")
    scores = head.logits(feats.feats)
    metrics = classification_metrics(scores.numpy(), feats.labels.numpy(), ks=(1, 5))
    return {"metrics": metrics, "num_classes": len(names), "skipped": feats.skipped.as_dict(),
            "head_meta": head.meta}
