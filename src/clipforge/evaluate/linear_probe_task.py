"""Linear-probe evaluation of a model's frozen image features (CLIP protocol, `adapt/linear_probe_solver.py`).

Features of the train and test sources are computed once (`Encoder.encode_source`, labelled samples only) and
handed to the probe: optional k-shot sampling per class, a validation split of the training features for the
C sweep, refit on train + validation, metrics on the test features. Without a test source, `test_fraction`
of the one source is held out, stratified by class and seeded. A CLIP_benchmark folder with no test set
given trains on its "train" split and tests on the chosen one.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.model_selection import train_test_split

from clipforge.adapt.linear_probe_solver import linear_probe
from clipforge.encode import as_encoder
from clipforge.errors import UsageError
from clipforge.evaluate.datasets import is_clip_benchmark_dir, open_eval_dataset
from clipforge.evaluate.tasks import TASKS, EvalTask, TaskResult
from clipforge.registry import Option

__all__ = ["evaluate_linear_probe", "LinearProbe"]


def evaluate_linear_probe(model, train_source, test_source=None, *, test_fraction: Optional[float] = None,
                          k_shot: Optional[int] = None, val_fraction: float = 0.2, seed: int = 0,
                          num_classes: Optional[int] = None, batch_size: int = 256, workers: int = 0,
                          progress: Optional[bool] = None, probe_options: Optional[dict] = None) -> dict:
    """`probe_options` go to `fit_linear_probe` (c_grid, refine_steps, max_iter; defaults: the CLIP protocol).

    -> {"metrics": {top1, top5 (when it applies), mean_per_class_recall, n, best_C, val_accuracy,
    n_train, n_val}, "num_classes", "skipped": {"train": ..., "test": ...}}."""
    encoder = as_encoder(model)
    if (test_source is None) == (test_fraction is None):
        raise UsageError("linear probe: give a test set (`test_dataset`) or a held-out fraction "
                         "(`test_fraction`), not both and not neither")
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise UsageError(f"`test_fraction` must be in (0, 1), got {test_fraction}")
    if k_shot is not None and k_shot < 1:
        raise UsageError(f"`k_shot` must be >= 1, got {k_shot}")
    kw = dict(workers=workers, require="label", progress=progress)
    tr = encoder.encode_source(train_source, batch_size, desc="probe train features", **kw)
    if len(tr) == 0:
        raise UsageError(f"{train_source.spec}: no readable labelled images")
    skipped = {"train": tr.skipped.as_dict()}
    x, y = tr.feats.numpy(), tr.label_tensor().numpy()
    if test_source is not None:
        te = encoder.encode_source(test_source, batch_size, desc="probe test features", **kw)
        if len(te) == 0:
            raise UsageError(f"{test_source.spec}: no readable labelled images")
        skipped["test"] = te.skipped.as_dict()
        train_x, train_y, test_x, test_y = x, y, te.feats.numpy(), te.label_tensor().numpy()
    else:
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


@TASKS.register("linear-probe")
class LinearProbe(EvalTask):
    """CLIP-protocol logistic-regression probe on frozen image features (optionally k-shot)."""

    options = (
        Option("test_dataset", str, help="linear probe: the test set (the dataset is the training set)"),
        Option("test_fraction", float, help="linear probe: hold out this fraction of the dataset"),
        Option("k_shot", int, help="linear probe: train on K images per class"),
        Option("probe_options", dict, cli=False, help="fit_linear_probe settings: c_grid, refine_steps, max_iter"),
    )

    def run(self, encoder, dataset, ctx, *, test_dataset=None, test_fraction=None, k_shot=None,
            probe_options=None) -> TaskResult:
        train_ds, test_ds = dataset, None
        if test_dataset is not None:
            test_ds = open_eval_dataset(test_dataset, split=None, image_root=ctx.image_root)
        elif test_fraction is None and isinstance(dataset.name, str) and is_clip_benchmark_dir(dataset.name):
            # CLIP_benchmark folder: train on its "train" split, test on the chosen (default "test") one
            if dataset.split == "train":
                raise UsageError("linear probe on the 'train' split needs `test_dataset` or `test_fraction`")
            train_ds, test_ds = open_eval_dataset(dataset.name, split="train"), dataset
        n_cls = len(dataset.classnames) if dataset.classnames else None
        res = evaluate_linear_probe(encoder, train_ds.source, None if test_ds is None else test_ds.source,
                                    test_fraction=test_fraction, k_shot=k_shot, seed=ctx.seed, num_classes=n_cls,
                                    probe_options=probe_options, batch_size=ctx.batch_size, workers=ctx.workers,
                                    progress=ctx.progress)
        config = {"k_shot": k_shot, "test_fraction": test_fraction, "probe_options": probe_options,
                  "train_dataset": train_ds.source.spec, "test_dataset": None if test_ds is None else test_ds.name}
        return TaskResult(res["metrics"], config, {"num_classes": res["num_classes"], "skipped": res["skipped"]})
