"""Classification metrics: top-k accuracy, mean per-class recall, confusion matrix, multilabel mAP.

Inputs are numpy arrays or torch tensors (converted to numpy). Scores are `(N, C)`, labels `(N,)` ints in
`[0, C)`.

Tie rule (all functions here): when two classes have exactly the same score, the class with the LOWER index
ranks first (it "wins"). This is deterministic and documented; scikit-learn's `top_k_accuracy_score`
resolves ties the other way (higher index first, from a reversed stable sort), so the two agree exactly only
on tie-free scores. `average_precision` ranks tied items by lower index first as well, whereas scikit-learn
groups tied scores into one threshold.

CLIP_benchmark: its top-1/top-5 accuracy ranks classes with `torch.topk`, whose order among tied scores is
unspecified (it depends on the kernel), while its mean-per-class recall uses `argmax`, which returns the
lowest tied index — our rule. On tie-free scores all agree exactly; with exact ties (duplicated class
embeddings) our top-1 equals CLIP_benchmark's argmax accuracy and may differ from its top-k path (on the
golden tie set: 0.626 vs 0.656; docs/fidelity.md).

Retrieval metrics (recall@K, AP@k, nDCG@k, MRR) are in `clipforge.evaluate.retrieval_metrics`.
"""
from __future__ import annotations

import numpy as np

from clipforge.errors import UsageError

__all__ = [
    "to_numpy",
    "stable_argsort_desc",
    "label_ranks",
    "predictions",
    "topk_accuracy",
    "mean_per_class_recall",
    "confusion_matrix",
    "average_precision",
    "multilabel_map",
    "classification_metrics",
]


def to_numpy(x) -> np.ndarray:
    """Torch tensor / list / array -> numpy array (no copy when already numpy)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def stable_argsort_desc(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Indices that sort `scores` descending along `axis`; ties keep the lower index first.

    A stable ascending sort of `-scores` keeps equal elements in their original (index) order. NaN scores sort
    last.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), np.inf, -s)  # NaN -> ranked last
    return np.argsort(s, axis=axis, kind="stable")


def _check_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = to_numpy(scores), to_numpy(labels).astype(np.int64)
    if scores.ndim != 2:
        raise UsageError(f"scores must be 2-D (N, C), got shape {scores.shape}")
    if labels.shape != (scores.shape[0],):
        raise UsageError(f"labels must have shape ({scores.shape[0]},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise UsageError(f"labels must lie in [0, {scores.shape[1]}), got range [{labels.min()}, {labels.max()}]")
    return scores, labels


def label_ranks(scores, labels) -> np.ndarray:
    """1-based rank of the true class in each row (ties: lower class index ranks first).  # (N,)

    rank = 1 + #(classes scoring higher) + #(classes scoring equal with a lower index). Computed by counting,
    so it costs O(N*C) and no sort.
    """
    scores, labels = _check_scores_labels(scores, labels)
    n, c = scores.shape
    true = scores[np.arange(n), labels][:, None]  # (N, 1)
    idx = np.arange(c)[None, :]
    higher = (scores > true).sum(1)
    tied_before = ((scores == true) & (idx < labels[:, None])).sum(1)
    return 1 + higher + tied_before


def topk_accuracy(scores, labels, ks=(1, 5)) -> dict[str, float]:
    """Top-k accuracy for each k in `ks` that is <= the number of classes.

    Returns `{"top1": ..., "top5": ...}`. A k larger than the number of classes would be trivially 1.0 and is
    left out rather than reported (no NaN, no misleading 100%). Ties: lower class index wins, as `argmax`
    does (CLIP_benchmark's `torch.topk` path may order exact ties differently; see the module docstring).
    """
    scores, labels = _check_scores_labels(scores, labels)
    n, c = scores.shape
    if n == 0:
        raise UsageError("topk_accuracy needs at least one sample")
    ranks = label_ranks(scores, labels)
    out = {}
    for k in ks:
        k = int(k)
        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        if k <= c:
            out[f"top{k}"] = float((ranks <= k).mean())
    return out


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predicted classes."""
    y_true, y_pred = to_numpy(y_true).astype(np.int64), to_numpy(y_pred).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise UsageError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise UsageError(f"labels must lie in [0, {num_classes})")
    cm = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def mean_per_class_recall(y_true, y_pred, num_classes: int | None = None) -> float:
    """Balanced accuracy: mean over classes PRESENT in y_true of (correct / support).

    Classes with no true samples are skipped (their recall is undefined), as scikit-learn's
    `balanced_accuracy_score` does.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(1)
    present = support > 0
    if not present.any():
        raise UsageError("mean_per_class_recall needs at least one sample")
    return float((np.diag(cm)[present] / support[present]).mean())


def average_precision(relevant, scores=None, n_positives: int | None = None) -> float:
    """Non-interpolated AP: mean over positives of precision at the rank where each positive is found.

    `relevant` is a boolean/0-1 vector. If `scores` is given, items are ranked by score descending (ties:
    lower index first); otherwise `relevant` is taken as already in ranked order. `n_positives` (default: the
    number of positives in `relevant`) is the denominator, so positives that were never retrieved count as
    misses. Returns 0.0 when there are no positives. Equals scikit-learn's `average_precision_score` on
    tie-free scores.
    """
    rel = to_numpy(relevant).astype(bool).ravel()
    if scores is not None:
        rel = rel[stable_argsort_desc(to_numpy(scores).ravel())]
    npos = int(rel.sum()) if n_positives is None else int(n_positives)
    if npos == 0:
        return 0.0
    hits = np.cumsum(rel)
    precision_at_hits = hits[rel] / (np.flatnonzero(rel) + 1)
    return float(precision_at_hits.sum() / npos)


def multilabel_map(y_true, scores) -> tuple[float, np.ndarray]:
    """Macro mean of per-class AP for multilabel targets `y_true (N, C)` in {0, 1} and `scores (N, C)`.

    Returns `(mAP, ap_per_class)`; classes with no positive sample get NaN in `ap_per_class` and are left out
    of the mean (scikit-learn would count them as 0 with a warning).
    """
    y_true, scores = to_numpy(y_true), to_numpy(scores)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise UsageError(f"y_true and scores must both be (N, C), got {y_true.shape} and {scores.shape}")
    aps = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        if y_true[:, c].any():
            aps[c] = average_precision(y_true[:, c], scores[:, c])
    valid = ~np.isnan(aps)
    if not valid.any():
        raise UsageError("multilabel_map: no class has a positive sample")
    return float(aps[valid].mean()), aps


def classification_metrics(scores, labels, ks=(1, 5)) -> dict[str, float]:
    """The standard zero-shot / probe report: top-k (those that apply) and mean per-class recall."""
    scores, labels = _check_scores_labels(scores, labels)
    out = topk_accuracy(scores, labels, ks)
    out["mean_per_class_recall"] = mean_per_class_recall(labels, predictions(scores), scores.shape[1])
    out["n"] = int(scores.shape[0])
    return out


def predictions(scores) -> np.ndarray:
    """argmax per row with the documented tie rule (lower class index wins).  # (N,)"""
    s = to_numpy(scores).astype(np.float64)
    return np.argmax(np.where(np.isnan(s), -np.inf, s), axis=1)  # argmax returns the first maximum
