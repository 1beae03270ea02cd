"""Tip-Adapter (Zhang et al. 2022): a training-free cache model over the support features, fused with the
zero-shot classifier,

    logits = 100 * f W^T + alpha * exp(-beta * (1 - f K^T)) L        K: support features, L: their one-hot labels

with alpha (how much the cache counts) and beta (how sharp its affinities are) searched on a grid over the
validation features, as the paper does. Its code searches both linearly from 0.1 up to a per-dataset scale
(alpha ~3 for CLIP on ImageNet); here beta is linear in [0.1, beta_max] but alpha is geometric in
[0.1, alpha_max = 100]: a small model's zero-shot classifier can be far weaker than CLIP's, and then the cache
must be able to outweigh it (the search on validation decides, so a wider range costs nothing but grid points).
With no validation features the search runs on the support set leave-one-out (an image never sees its own
cache entry).
"""
from __future__ import annotations

import numpy as np
import torch

from clipforge.adapt.fewshot_heads import TipAdapterHead, tip_logits
from clipforge.adapt.fewshot_method import FEWSHOT, SCALE, TEMPLATES, FewShotMethod
from clipforge.adapt.zeroshot_baseline import zeroshot_weights
from clipforge.errors import UsageError
from clipforge.registry import Option

__all__ = ["TipAdapter", "search_alpha_beta", "TIP_OPTIONS"]

TIP_OPTIONS = (
    TEMPLATES,
    Option("alpha_max", float, 100.0, help="tip-adapter: largest cache weight alpha searched, geometric grid from "
           "0.1 (default 100)"),
    Option("beta_max", float, 10.0, help="tip-adapter: largest affinity sharpness beta searched (default 10)"),
    Option("search_steps", int, 40, help="tip-adapter: grid points per hyper-parameter (default 40)"),
)


def search_alpha_beta(feats, labels, zs_weights, keys, values, *, alpha_max: float, beta_max: float, steps: int,
                      exclude_self: bool = False, scale: float = SCALE) -> tuple[float, float, float]:
    """(alpha, beta, accuracy) maximising accuracy on (feats, labels); the first best in grid order wins.
    `exclude_self`: feats ARE the keys (row i is key i): leave each one's own cache entry out."""
    if steps < 1 or alpha_max <= 0.1 or beta_max <= 0.1:
        raise UsageError(f"`search_steps` must be >= 1 and `alpha_max`, `beta_max` > 0.1 (got {steps}, "
                         f"{alpha_max}, {beta_max})")
    alphas = torch.logspace(np.log10(0.1), np.log10(alpha_max), steps) if steps > 1 else torch.tensor([0.1])
    betas = torch.linspace(0.1, beta_max, steps)
    zs = scale * feats @ zs_weights.T  # (N, C)
    affinity = feats @ keys.T  # (N, Nk)
    keep = 1.0 - torch.eye(len(feats), len(keys)) if exclude_self else torch.ones_like(affinity)
    best = (-1.0, 1.0, 1.0)
    for beta in betas.tolist():
        cache = (torch.exp(-beta * (1.0 - affinity)) * keep) @ values  # (N, C)
        logits = zs[None] + alphas[:, None, None] * cache[None]  # (A, N, C)
        acc = (logits.argmax(-1) == labels[None]).float().mean(1)  # (A,)
        i = int(acc.argmax())
        if float(acc[i]) > best[0]:
            best = (float(acc[i]), float(alphas[i]), beta)
    return best[1], best[2], best[0]


@FEWSHOT.register("tip-adapter")
class TipAdapter(FewShotMethod):
    """Tip-Adapter: training-free cache model of the support features, alpha/beta searched on validation."""

    options = TIP_OPTIONS

    def fit(self, encoder, support, *, seed=0, progress=None):
        w = zeroshot_weights(encoder, support.classnames, self.templates, progress)
        keys, values = support.feats, support.onehot()
        sel_x, sel_y = support.selection()
        alpha, beta, acc = search_alpha_beta(sel_x, sel_y, w, keys, values, alpha_max=self.alpha_max,
                                             beta_max=self.beta_max, steps=self.search_steps,
                                             exclude_self=not len(support.val_labels))
        return TipAdapterHead(w, keys, values, support.classnames, alpha, beta, SCALE,
                              {"method": self.name, "search_accuracy": acc, "templates": self.templates})

