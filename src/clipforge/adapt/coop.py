"""CoOp (Zhou et al. 2022): learned context vectors in front of each class name, through the frozen text tower.

    prompt_c = [SOT] v_1 ... v_M  <tokens of "classname.">  [EOT]      v: M learnable vectors of the tower's width

Unified context (one set of M vectors shared by all classes) or class-specific context (`csc`: M vectors per
class). Only the context trains, with cross-entropy on 100 * f t_c^T against the frozen image features; the
paper's recipe: SGD (momentum 0.9), lr 0.002, cosine schedule, batch 32, 16 vectors initialised N(0, 0.02^2)
or from a phrase's token embeddings (`ctx_init`, e.g. "a photo of a"), 200 epochs at 8-16 shots, 100 at 2-4,
50 at 1. The resulting class vectors form a linear head (the context is kept with it).

The text tower runs with gradients here, which `clipforge.encode` (inference only) does not offer: this is the
one method that calls the model itself, through `TextTower.forward_embeddings`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from clipforge.adapt.fewshot_heads import LinearHead
from clipforge.adapt.fewshot_method import FEWSHOT, SCALE, FewShotMethod
from clipforge.errors import UsageError
from clipforge.registry import Option

__all__ = ["CoOp", "PromptLearner", "default_epochs"]


def default_epochs(shots: int) -> int:
    """CoOp's schedule: 200 epochs at 8+ shots per class, 100 at 2-4, 50 at 1."""
    return 200 if shots >= 8 else 100 if shots >= 2 else 50


class PromptLearner(torch.nn.Module):
    """Context vectors + the token ids of `classname.` for each class; `forward()` -> (C, D) class features."""

    def __init__(self, model, classnames, n_ctx: int = 16, csc: bool = False, ctx_init: Optional[str] = None,
                 seed: int = 0):
        super().__init__()
        tower, tok = model.text, model.tokenizer
        if tok is None:
            raise UsageError("CoOp needs the model's tokenizer")
        self.tower = tower
        emb = tower.token_embedding
        width, ctx_len = emb.weight.shape[1], tower.cfg.context_length
        suffix = tok([f"{c}." for c in classnames])  # (C, T): SOT, name tokens, EOT, padding
        sot = suffix[:, :1]
        init = None
        if ctx_init:
            init_ids = tok([ctx_init])[0]
            n_init = int(self._end(init_ids.unsqueeze(0), tower)[0]) - 1  # tokens between SOT and EOT
            n_ctx = n_init
            with torch.no_grad():
                init = emb(init_ids[1:1 + n_init].to(emb.weight.device)).float()  # (M, W)
        if n_ctx < 1:
            raise UsageError(f"`n_ctx` must be >= 1, got {n_ctx}")
        longest = int(self._end(suffix, tower).max()) + 1 + n_ctx
        if longest > ctx_len:
            raise UsageError(f"{n_ctx} context vectors plus the longest class name need {longest} tokens, more than "
                             f"the model's context length {ctx_len}: lower `n_ctx`")
        # ids: SOT, n_ctx placeholders (SOT's id: never the highest, so argmax pooling still finds EOT), suffix
        self.register_buffer("ids", torch.cat([sot, sot.expand(-1, n_ctx), suffix[:, 1:ctx_len - n_ctx]], 1))
        g = torch.Generator().manual_seed(seed)
        shape = (len(classnames), n_ctx, width) if csc else (n_ctx, width)
        ctx = init.expand(shape).clone() if init is not None else torch.randn(shape, generator=g) * 0.02
        self.ctx = torch.nn.Parameter(ctx.to(emb.weight.device))
        self.n_ctx, self.csc = n_ctx, csc

    @staticmethod
    def _end(ids, tower):
        """(B,) position of each sequence's end token. clipforge's own tower says (`pool_index`); a Hugging Face
        tower (`HFTextTower`: [CLS] ... [SEP], padding `pad_id`) has none: its end token is the last non-pad."""
        if hasattr(tower, "pool_index"):
            return tower.pool_index(ids)
        return (ids != tower.pad_id).long().sum(1).clamp(min=1) - 1

    def forward(self) -> torch.Tensor:
        emb = self.tower.token_embedding(self.ids)  # (C, T, W), frozen
        ctx = self.ctx.to(emb.dtype)
        ctx = ctx if self.csc else ctx.unsqueeze(0).expand(len(self.ids), -1, -1)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx:]], dim=1)
        return F.normalize(self.tower.forward_embeddings(x, self.ids).pooled.float(), dim=-1)  # (C, D)


@FEWSHOT.register("coop")
class CoOp(FewShotMethod):
    """CoOp: learned prompt context (unified or class-specific) through the frozen text tower."""

    options = (
        Option("n_ctx", int, 16, help="coop: number of context vectors (default 16)"),
        Option("csc", bool, False, help="coop: class-specific context (default: one context for all classes)"),
        Option("ctx_init", str, help="coop: initialise the context from this phrase, e.g. 'a photo of a'"),
        Option("epochs", int, help="coop: epochs (default: 200 at 8+ shots, 100 at 2-4, 50 at 1, as the paper)"),
        Option("lr", float, 0.002, help="coop: SGD learning rate (default 0.002)"),
        Option("fit_batch_size", int, 32, help="coop: support images per optimisation step (default 32)"),
    )

    def fit(self, encoder, support, *, seed=0, progress=None):
        model = getattr(encoder, "model", None)
        if model is None or not hasattr(model, "text"):
            raise UsageError("coop needs a clipforge model (its text tower runs with gradients)")
        learner = PromptLearner(model, support.classnames, self.n_ctx, self.csc, self.ctx_init, seed)
        shots = int(torch.bincount(support.labels).max())
        epochs = self.epochs or default_epochs(shots)
        n, bs = len(support.labels), max(1, self.fit_batch_size)
        steps = epochs * math.ceil(n / bs)
        opt = torch.optim.SGD([learner.ctx], lr=self.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        g = torch.Generator().manual_seed(seed)
        feats, labels = support.feats.to(learner.ctx.device), support.labels.to(learner.ctx.device)
        frozen = [p for p in model.parameters() if p.requires_grad]
        was_training = model.training
        model.eval()
        try:
            for p in frozen:
                p.requires_grad_(False)
            with torch.enable_grad():
                for _ in range(epochs):
                    for idx in torch.randperm(n, generator=g).split(bs):
                        logits = SCALE * feats[idx] @ learner().T
                        loss = F.cross_entropy(logits, labels[idx])
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        sched.step()
            with torch.no_grad():
                weights = learner().cpu()
        finally:
            for p in frozen:
                p.requires_grad_(True)
            model.train(was_training)
        meta = {"method": self.name, "n_ctx": learner.n_ctx, "csc": self.csc, "ctx_init": self.ctx_init,
                "epochs": epochs, "lr": self.lr}
        return LinearHead(weights, support.classnames, SCALE, meta=meta, extra={"ctx": learner.ctx.detach().cpu()})
