"""Tip-Adapter-F (Zhang et al. 2022): Tip-Adapter whose cache keys are fine-tuned (the paper's recipe: AdamW,
lr 1e-3, eps 1e-4, cosine schedule, 20 epochs, batch 256, initial alpha = beta = 1), then alpha/beta searched
on validation as for Tip-Adapter. The paper trains on augmented views of the support images; on cached
features every support image IS a key, so training uses leave-one-out affinities (an image never sees its
own cache entry) instead, or the loss would be solved by self-matching from the start.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipforge.adapt.fewshot_heads import TipAdapterHead
from clipforge.adapt.fewshot_method import FEWSHOT, SCALE, FewShotMethod
from clipforge.adapt.tip_adapter import TIP_OPTIONS, search_alpha_beta
from clipforge.adapt.zeroshot_baseline import zeroshot_weights
from clipforge.registry import Option

__all__ = ["TipAdapterF", "finetune_keys"]


def finetune_keys(feats, labels, zs_weights, values, *, epochs: int, lr: float, batch_size: int = 256,
                  alpha: float = 1.0, beta: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Cache keys (N, D) trained with cross-entropy on the fused logits, leave-one-out (see the module doc)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.nn.Parameter(feats.clone())
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4)
    n = len(feats)
    steps = max(1, epochs * math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    zs = SCALE * feats @ zs_weights.T  # (N, C), fixed
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=g).split(batch_size):
                keep = torch.ones(len(idx), n)
                keep[torch.arange(len(idx)), idx] = 0.0  # leave each image's own entry out
                cache = (torch.exp(-beta * (1.0 - feats[idx] @ keys.T)) * keep) @ values
                loss = F.cross_entropy(zs[idx] + alpha * cache, labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return keys.detach()


@FEWSHOT.register("tip-adapter-f")
class TipAdapterF(FewShotMethod):
    """Tip-Adapter-F: the cache keys fine-tuned on the support set, then alpha/beta searched on validation."""

    options = TIP_OPTIONS + (
        Option("epochs", int, 20, help="tip-adapter-f: training epochs over the support set (default 20)"),
        Option("lr", float, 1e-3, help="tip-adapter-f: AdamW learning rate (default 1e-3)"),
    )

    def fit(self, encoder, support, *, seed=0, progress=None):
        w = zeroshot_weights(encoder, support.classnames, self.templates, progress)
        values = support.onehot()
        keys = finetune_keys(support.feats, support.labels, w, values, epochs=self.epochs, lr=self.lr, seed=seed)
        sel_x, sel_y = support.selection()
        alpha, beta, acc = search_alpha_beta(sel_x, sel_y, w, keys, values, alpha_max=self.alpha_max,
                                             beta_max=self.beta_max, steps=self.search_steps,
                                             exclude_self=not len(support.val_labels))
        return TipAdapterHead(w, keys, values, support.classnames, alpha, beta, SCALE,
                              {"method": self.name, "search_accuracy": acc, "epochs": self.epochs, "lr": self.lr})
