"""The linear-probe baseline of the few-shot protocol: the CLIP protocol's logistic regression on the support
features, C chosen on the validation features (no refit on them, so it learns from the same k shots as every
other method)."""
from __future__ import annotations

import numpy as np
import torch

from clipforge.adapt.fewshot_heads import LinearHead
from clipforge.adapt.fewshot_method import FEWSHOT, FewShotMethod
from clipforge.adapt.linear_probe_solver import fit_linear_probe

__all__ = ["LinearProbeMethod", "probe_head"]


def probe_head(feats, labels, val_feats, val_labels, classnames, proj=None, meta=None) -> LinearHead:
    """Fit the probe (C swept on validation; the support itself when there is none) -> a `LinearHead`."""
    vx, vy = (val_feats, val_labels) if len(val_labels) else (feats, labels)
    res = fit_linear_probe(feats.numpy(), labels.numpy(), vx.numpy(), vy.numpy(), refit=False)
    c, d = len(classnames), feats.shape[1]
    w, b = torch.zeros(c, d), torch.full((c,), -1e4)  # a class the solver never saw can never win
    classes = torch.as_tensor(res.model.classes_.astype(np.int64))
    coef, intercept = torch.as_tensor(res.model.coef_).float(), torch.as_tensor(res.model.intercept_).float()
    if len(classes) == 2:  # scikit-learn's binary case: one row for class 1 against class 0
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    w[classes], b[classes] = coef, intercept
    return LinearHead(w, classnames, 1.0, b, proj, {**(meta or {}), "best_C": res.best_C,
                                                    "val_accuracy": res.val_accuracy})


@FEWSHOT.register("linear-probe")
class LinearProbeMethod(FewShotMethod):
    """Logistic-regression probe on the support features (C swept on validation): the classic baseline."""

    options = ()

    def fit(self, encoder, support, *, seed=0, progress=None):
        return probe_head(support.feats, support.labels, support.val_feats, support.val_labels, support.classnames,
                          meta={"method": self.name})
