"""Linear probe on frozen features, CLIP protocol.

L2-regularised multinomial logistic regression (scikit-learn, L-BFGS) on cached image features. The inverse
regularisation strength C is swept over 1e6, 1e5, ..., 1e-6 on a validation split, then refined around the
best value by bisection in log10 space (step halves each round: best +- 0.5, +- 0.25, ... decades), and the
final model is refit on train + validation with the chosen C.

Model selection: the highest validation accuracy; ties go to the lower validation log-loss, then to the
value evaluated first (the sweep runs from large C to small). k-shot experiments sample k images per class
with `kshot_indices`.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from clipforge.errors import UsageError
from clipforge.metrics.classification import classification_metrics, to_numpy

__all__ = ["kshot_indices", "split_train_val", "C_GRID", "LinearProbeResult", "fit_linear_probe",
           "probe_scores", "linear_probe"]

log = logging.getLogger(__name__)
C_GRID = tuple(10.0**e for e in range(6, -7, -1))  # 1e6 ... 1e-6


def kshot_indices(labels, k: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of k random samples per class (all of a class's samples if it has fewer than k)."""
    labels = to_numpy(labels).ravel()
    if k < 1:
        raise UsageError(f"k (shots per class) must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            log.warning("class %s has only %d samples for %d-shot sampling; using all", c, len(idx), k)
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def split_train_val(labels, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: about `val_fraction` of each class to validation, at least one sample kept in train."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = to_numpy(labels).ravel()
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(idx) - 1, int(round(val_fraction * len(idx))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@dataclass
class LinearProbeResult:
    model: object  # fitted sklearn LogisticRegression (on train + val when refit)
    best_C: float
    val_accuracy: float
    search: list[tuple[float, float, float]] = field(default_factory=list)  # (C, val acc, val log-loss)


def _fit(x, y, c: float, max_iter: int, random_state: int):
    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at extreme C is expected in a sweep
        clf.fit(x, y)
    return clf


def _val_score(clf, x, y) -> tuple[float, float]:
    proba = clf.predict_proba(x)
    acc = float((clf.classes_[proba.argmax(1)] == y).mean())
    return acc, float(log_loss(y, proba, labels=clf.classes_))


def fit_linear_probe(
    train_x, train_y, val_x, val_y, c_grid=C_GRID, refine_steps: int = 8, max_iter: int = 1000,
    refit: bool = True, random_state: int = 0,
) -> LinearProbeResult:
    """Sweep C on validation, refine by log-space bisection, refit on train + val (see module doc)."""
    tx, ty, vx, vy = (to_numpy(a) for a in (train_x, train_y, val_x, val_y))
    if len(vx) == 0:
        raise UsageError("the validation split is empty: give more samples or a larger val_fraction")
    if len(np.unique(ty)) < 2:
        raise UsageError("a linear probe needs at least two classes in the training split")
    search: list[tuple[float, float, float]] = []

    def evaluate(log_c: float) -> tuple[float, float]:
        c = float(10.0**log_c)
        acc, loss = _val_score(_fit(tx, ty, c, max_iter, random_state), vx, vy)
        search.append((c, acc, loss))
        return acc, -loss  # larger is better, compared as a tuple

    best_log, best = None, None
    for c in c_grid:
        score = evaluate(np.log10(c))
        if best is None or score > best:
            best_log, best = float(np.log10(c)), score
    step = abs(np.diff(np.log10(c_grid))).min() if len(c_grid) > 1 else 1.0
    for _ in range(refine_steps):
        step /= 2
        center = best_log
        for cand in (center - step, center + step):
            score = evaluate(cand)
            if score > best:
                best_log, best = cand, score
    best_c = float(10.0**best_log)
    if refit:
        model = _fit(np.concatenate([tx, vx]), np.concatenate([ty, vy]), best_c, max_iter, random_state)
    else:
        model = _fit(tx, ty, best_c, max_iter, random_state)
    return LinearProbeResult(model, best_c, best[0], search)


def probe_scores(model, x, num_classes: int | None = None) -> np.ndarray:
    """Class probabilities as a (N, num_classes) matrix indexed by label (0 for classes unseen in training)."""
    proba = model.predict_proba(to_numpy(x))
    classes = model.classes_.astype(np.int64)
    n_cls = int(num_classes if num_classes is not None else classes.max() + 1)
    out = np.zeros((len(proba), n_cls), dtype=np.float64)
    out[:, classes] = proba
    return out


def linear_probe(
    train_x, train_y, test_x, test_y, val_x=None, val_y=None, val_fraction: float = 0.2, k_shot: int | None = None,
    seed: int = 0, num_classes: int | None = None, **fit_kwargs,
) -> dict:
    """The whole protocol on cached features: optional k-shot sampling, val split (unless given), sweep,
    refit, test metrics. Returns metrics (top-k that apply, mean per-class recall) plus `best_C`."""
    tx, ty = to_numpy(train_x), to_numpy(train_y).astype(np.int64)
    if k_shot is not None:
        keep = kshot_indices(ty, k_shot, seed)
        tx, ty = tx[keep], ty[keep]
    if val_x is None:
        tr, va = split_train_val(ty, val_fraction, seed)
        tx, ty, vx, vy = tx[tr], ty[tr], tx[va], ty[va]
    else:
        vx, vy = to_numpy(val_x), to_numpy(val_y).astype(np.int64)
    res = fit_linear_probe(tx, ty, vx, vy, **fit_kwargs)
    yt = to_numpy(test_y).astype(np.int64)
    n_cls = num_classes or int(max(ty.max(), vy.max(), yt.max())) + 1
    metrics = classification_metrics(probe_scores(res.model, test_x, n_cls), yt)
    metrics.update(best_C=res.best_C, val_accuracy=res.val_accuracy, n_train=int(len(ty)), n_val=int(len(vy)))
    return metrics
