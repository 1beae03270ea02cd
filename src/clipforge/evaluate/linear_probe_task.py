"""Linear-probe evaluation of a model's frozen image features (CLIP protocol, `adapt/linear_probe.py`).

Features of the train and test sources are computed once (`labelled_image_features`) and handed to the
probe: optional k-shot sampling per class, a validation split of the training features for the C sweep,
refit on train + validation, metrics on the test features. Without a test source, `test_fraction` of the one
source is held out, stratified by class and seeded.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from clipforge.errors import UsageError

__all__ = ["evaluate_linear_probe"]


def evaluate_linear_probe(model, train_source, test_source=None, *, test_fraction: Optional[float] = None,
                          k_shot: Optional[int] = None, val_fraction: float = 0.2, seed: int = 0,
                          num_classes: Optional[int] = None, batch_size: int = 256, workers: int = 0,
                          progress: Optional[bool] = None, probe_options: Optional[dict] = None) -> dict:
    """`probe_options` go to `fit_linear_probe` (c_grid, refine_steps, max_iter; defaults: the CLIP protocol).

    -> {"metrics": {top1, top5 (when it applies), mean_per_class_recall, n, best_C, val_accuracy,
    n_train, n_val}, "num_classes", "skipped": {"train": ..., "test": ...}}."""
    from clipforge.adapt.linear_probe import linear_probe
    from clipforge.evaluate.features import labelled_image_features

    if (test_source is None) == (test_fraction is None):
        raise UsageError("linear probe: give a test set (--test-dataset) or a held-out fraction "
                         "(--test-fraction), not both and not neither")
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    tr = labelled_image_features(model, train_source, batch_size=batch_size, workers=workers,
                                 progress=progress, desc="probe train features")
    if len(tr.ids) == 0:
        raise UsageError(f"{train_source.spec}: no readable labelled images")
    skipped = {"train": tr.skipped.as_dict()}
    x, y = tr.feats.numpy(), tr.labels.numpy()
    if test_source is not None:
        te = labelled_image_features(model, test_source, batch_size=batch_size, workers=workers,
                                     progress=progress, desc="probe test features")
        if len(te.ids) == 0:
            raise UsageError(f"{test_source.spec}: no readable labelled images")
        skipped["test"] = te.skipped.as_dict()
        train_x, train_y, test_x, test_y = x, y, te.feats.numpy(), te.labels.numpy()
    else:
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(y))
        try:
            a, b = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
        except ValueError as e:  # a class too small to stratify
            raise UsageError(f"cannot hold out {test_fraction} of {len(y)} samples stratified by class: {e}")
        a, b = np.sort(a), np.sort(b)
        train_x, train_y, test_x, test_y = x[a], y[a], x[b], y[b]
    n_cls = num_classes or int(max(train_y.max(), test_y.max())) + 1
    metrics = linear_probe(train_x, train_y, test_x, test_y, val_fraction=val_fraction, k_shot=k_shot,
                           seed=seed, num_classes=n_cls, **(probe_options or {}))
    return {"metrics": metrics, "num_classes": n_cls, "skipped": skipped}
