"""The k-shot protocol: every few-shot method on the same splits, k in {1, 2, 4, 8, 16}, several seeds.

For each k and seed, `sample_support` draws k labelled images per class from the training pool (the support
set) and `val_shots` more per class, disjoint from them (the validation set: hyper-parameters only, default
min(k, 4)); every method fits on exactly those features and is scored on the same test set. Features are
computed once (`clipforge.encode`). One result record per (method, k): top-1 and mean per-class recall as the
mean over seeds with their standard deviation and the per-seed values, and the mean fit time; the zero-shot
baseline does not look at the support set, so it is fitted once and repeated at every k (the flat line).
Progress counts (method, k, seed) steps (`clipforge.progress`: a bar on a terminal, log lines otherwise).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from clipforge.adapt.fewshot_method import FEWSHOT
from clipforge.adapt.support import SupportSet, sample_support
from clipforge.encode import SourceFeatures, as_encoder
from clipforge.errors import UsageError
from clipforge.evaluate.datasets import open_eval_dataset
from clipforge.evaluate.tasks import TASKS, EvalTask, TaskResult
from clipforge.metrics.classification import classification_metrics
from clipforge.progress import Progress
from clipforge.registry import Option

__all__ = ["evaluate_fewshot", "FewShot", "DEFAULT_SHOTS", "parse_int_list"]

DEFAULT_SHOTS = (1, 2, 4, 8, 16)


def parse_int_list(value, name: str) -> list[int]:
    """"1,2,4" or [1, 2, 4] -> [1, 2, 4] (each >= 1)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        raise UsageError(f"`{name}` must be integers separated by commas, got {value!r}") from None
    if not out or min(out) < 1:
        raise UsageError(f"`{name}` must be integers >= 1, got {value!r}")
    return out


def _method_options(methods: Sequence[str], options: dict) -> dict[str, dict]:
    """Each method's own options out of `options`; one that no chosen method declares is an error."""
    given = {k: v for k, v in options.items() if v is not None}
    per = {m: {k: v for k, v in given.items() if any(o.name == k for o in FEWSHOT.options(m))} for m in methods}
    used = {k for opts in per.values() for k in opts}
    for k in given:
        if k not in used:
            owners = FEWSHOT.owners(k)
            raise UsageError(f"`{k}` does not apply to the chosen methods ({', '.join(methods)})"
                             + (f"; it belongs to {', '.join(owners)}" if owners else ""))
    return {m: FEWSHOT.check(m, per[m]) for m in methods}


def evaluate_fewshot(model, train_feats, test_feats, classnames, *, methods: Optional[Sequence[str]] = None,
                     shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = (0, 1, 2),
                     val_shots: Optional[int] = None, progress: Optional[bool] = None, **method_options) -> list[dict]:
    """Run the protocol on precomputed `SourceFeatures` (train pool, test) -> one dict per (method, k):
    {"method", "k_shot", "metrics", "config"} (see the module doc). `method_options` go to the methods that
    declare them (e.g. templates=, descriptions=)."""
    encoder = as_encoder(model)
    methods = list(methods or FEWSHOT.names())
    for m in methods:
        FEWSHOT.get(m)
    opts = _method_options(methods, method_options)
    x, y = train_feats.feats, train_feats.label_tensor()
    tx, ty = test_feats.feats, test_feats.label_tensor().numpy()
    if (y < 0).any() or len(y) == 0 or len(ty) == 0:
        raise UsageError("the few-shot protocol needs labelled training and test images")
    if int(max(y.max(), ty.max())) >= len(classnames):
        raise UsageError(f"labels go up to {int(max(y.max(), ty.max()))} but only {len(classnames)} class names")
    out = []
    bar = Progress(len(methods) * len(shots) * len(seeds), desc="few-shot", unit="fit", progress=progress)
    with bar:
        for method in methods:
            out += _run_method(method, encoder, opts[method], x, y, tx, ty, classnames, shots, seeds, val_shots,
                               progress, bar)
    return out


def _run_method(method, encoder, opts, x, y, tx, ty, classnames, shots, seeds, val_shots, progress, bar) -> list:
    """One method's records, one per k (see `evaluate_fewshot`)."""
    out = []
    cls = FEWSHOT.get(method)
    fixed = None
    for k in shots:
        accs, mpcrs, fit_s, metas = [], [], [], []
        for seed in seeds:
            bar.set_postfix(method=method, k=k, seed=seed)
            if fixed is not None:
                head, dt = fixed
            else:
                sup, val = sample_support(y.numpy(), k, seed, val_shots if val_shots is not None else min(k, 4))
                support = SupportSet.from_features(x[sup], y[sup], classnames, x[val], y[val])
                t0 = time.perf_counter()
                head = cls(**opts).fit(encoder, support, seed=seed, progress=progress)
                dt = time.perf_counter() - t0
                if not cls.uses_support:
                    fixed = (head, dt)
            m = classification_metrics(head.scores(tx).numpy(), ty, ks=(1,))
            accs.append(m["top1"])
            mpcrs.append(m["mean_per_class_recall"])
            fit_s.append(dt)
            metas.append({k_: v for k_, v in head.meta.items() if isinstance(v, (int, float, str))})
            bar.update(1)
        metrics = {"top1": float(np.mean(accs)), "top1_std": float(np.std(accs)), "top1_per_seed": accs,
                   "mean_per_class_recall": float(np.mean(mpcrs)), "mean_per_class_recall_std": float(np.std(mpcrs)),
                   "fit_s": float(np.mean(fit_s)), "n_test": int(len(ty))}
        config = {"method": method, "k_shot": int(k), "seeds": list(seeds),
                  "val_shots": val_shots if val_shots is not None else min(k, 4),
                  **{k_: v for k_, v in opts.items() if v is not None}}
        out.append({"method": method, "k_shot": int(k), "metrics": metrics, "config": config,
                    "head_meta": metas})
    return out


@TASKS.register("few-shot")
class FewShot(EvalTask):
    """k-shot protocol: every few-shot method on the same splits, several seeds, mean +- std (one record each)."""

    @staticmethod
    def options():
        own = (
            Option("methods", str, help="few-shot: comma-separated methods (default all: "
                   + ", ".join(FEWSHOT.names()) + ")"),
            Option("shots", str, "1,2,4,8,16", help="few-shot: shots per class, comma-separated (default 1,2,4,8,16)"),
            Option("seeds", int, 3, help="few-shot: seeds per k (default 3; seed, seed+1, ...)"),
            Option("val_shots", int, help="few-shot: validation images per class, for hyper-parameters only "
                   "(default min(k, 4))"),
            Option("test_dataset", str, help="the test set (the dataset is the training pool)"),
            Option("test_fraction", float, help="hold out this fraction of the dataset as the test set"),
        )
        return own + tuple(replace(o, required=False, default=None) for o in FEWSHOT.all_options().values())

    def run(self, encoder, dataset, ctx, *, methods=None, shots="1,2,4,8,16", seeds=3, val_shots=None,
            test_dataset=None, test_fraction=None, **method_options) -> TaskResult:
        if (test_dataset is None) == (test_fraction is None):
            raise UsageError("few-shot: give a test set (`test_dataset`) or a held-out fraction (`test_fraction`), "
                             "not both and not neither")
        if seeds < 1 or (val_shots is not None and val_shots < 0):
            raise UsageError(f"`seeds` must be >= 1 and `val_shots` >= 0, got {seeds}, {val_shots}")
        method_list = [m.strip() for m in methods.split(",")] if methods else None
        shot_list = parse_int_list(shots, "shots")
        takes_templates = set(FEWSHOT.owners("templates"))
        if dataset.templates is not None and method_options.get("templates") is None and \
                takes_templates & set(method_list or FEWSHOT.names()):
            method_options["templates"] = dataset.templates
        kw = dict(workers=ctx.workers, require="label", progress=ctx.progress)
        feats = encoder.encode_source(dataset.source, ctx.batch_size, desc="few-shot pool", **kw)
        if len(feats) == 0:
            raise UsageError(f"{dataset.source.spec}: no readable labelled images")
        skipped = {"train": feats.skipped.as_dict()}
        if test_dataset is not None:
            test_ds = open_eval_dataset(test_dataset, split=None, image_root=ctx.image_root)
            test = encoder.encode_source(test_ds.source, ctx.batch_size, desc="few-shot test", **kw)
            skipped["test"] = test.skipped.as_dict()
            train = feats
        else:
            if not 0.0 < test_fraction < 1.0:
                raise UsageError(f"`test_fraction` must be in (0, 1), got {test_fraction}")
            y = feats.label_tensor().numpy()
            a, b = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=ctx.seed, stratify=y)
            train, test = _subset(feats, np.sort(a)), _subset(feats, np.sort(b))
        names = list(dataset.classnames or [])
        if not names:
            raise UsageError(f"{dataset.name}: no class names (give a dataset with classnames)")
        seed_list = [ctx.seed + i for i in range(seeds)]
        parts = evaluate_fewshot(encoder, train, test, names, methods=method_list, shots=shot_list, seeds=seed_list,
                                 val_shots=val_shots, progress=ctx.progress, **method_options)
        base = {"test_dataset": test_dataset, "test_fraction": test_fraction}
        results = [TaskResult(p["metrics"], {**base, **p["config"]}, {"num_classes": len(names), "skipped": skipped})
                   for p in parts]
        return TaskResult({}, base, {"num_classes": len(names), "skipped": skipped}, parts=results)


def _subset(feats, idx):
    return SourceFeatures(feats.feats[idx], [feats.ids[i] for i in idx], [feats.captions[i] for i in idx],
                          [feats.labels[i] for i in idx], [feats.meta[i] for i in idx] if feats.meta else [],
                          feats.skipped)
