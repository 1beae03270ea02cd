"""The closed-form step of projector alignment: linear heads on cached features, CLIP's loss, no autograd.

On a feature cache (train/feature_cache.py) a step is two small matmuls per head and a B x B softmax: so
little arithmetic that autograd's graph and its ~60 small kernels are a large share of it (the closed form
below runs 1.4x the autograd step's rate at every width, docs/bench_feature_cache.md). For the common case (each head an `nn.Linear`, or nothing
trainable on a frozen clipforge tower; loss `clip`, with or without label smoothing; one process; the model
in fp32) the gradients have a short closed form, computed here in ~30 kernels:

    u = x W₁ᵀ + b₁,  v = t W₂ᵀ + b₂,  û = u/‖u‖,  v̂ = v/‖v‖,  s = exp(τ),  S = s · û v̂ᵀ     (B x B)
    L = ½ [CE(S, rows) + CE(Sᵀ, rows)],   CE with targets Q = (1 − ε) I + ε/B
    ∂L/∂S = (softmax_rows(S) − Q + softmax_cols(S) − Q) / 2B
    ∂L/∂τ = Σ ∂L/∂S ⊙ S,   ∂L/∂û = s ∂L/∂S v̂,   ∂L/∂v̂ = s (∂L/∂S)ᵀ û
    ∂L/∂u = (∂L/∂û − û (û·∂L/∂û)) / ‖u‖,   ∂L/∂W₁ = (∂L/∂u)ᵀ x,   ∂L/∂b₁ = Σ_rows ∂L/∂u

The gradients land in each parameter's `.grad`, so the run's own clipping, AdamW, schedule, logit-scale clamp,
logs and checkpoints apply unchanged; `tests/test_projector_step.py` checks loss and gradients against
autograd through the model and `CLIPLoss` (fp32: within 1e-5 of each gradient's largest entry). Under
`run.precision: bf16` the heads' matmuls take bf16 operands with fp32 results (as autocast would); the B x B
products and everything else stay fp32. Anything outside this case
(MLP heads, another loss, DDP, fp16, a logit bias the loss reads) trains through autograd as before, and
`refusal` says why.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from clipforge.losses.clip import CLIPLoss
from clipforge.losses.registry import LossOutput
from clipforge.models.projection import tower_head

log = logging.getLogger("clipforge.train")


def _head(tower: nn.Module):
    """(weight, bias) of a tower's trainable linear head, (None, None) for nothing trainable, or a reason."""
    head = tower_head(tower)
    if isinstance(head, nn.Identity):
        return None, None
    if type(head) is nn.Linear:
        if not head.weight.requires_grad:
            return "its head is frozen"
        return head.weight, head.bias
    return f"its head is a {type(head).__name__}, not a linear layer"


def refusal(core: nn.Module, loss_fn, precision: str, world_size: int) -> Optional[str]:
    """Why this cached-feature run needs autograd (None: the closed-form step applies)."""
    cls = type(loss_fn)
    if not (isinstance(loss_fn, CLIPLoss) and cls.forward is CLIPLoss.forward and cls.terms is CLIPLoss.terms):
        return f"the loss is {cls.__name__}, not CLIP's InfoNCE"
    if world_size > 1:
        return "the run is distributed"
    if precision not in ("fp32", "bf16"):
        return f"run.precision is {precision}"
    if core.logit_scale.dtype != torch.float32:
        return "the model is not fp32"
    for name, tower in (("image", core.visual), ("text", core.text)):
        w = _head(tower)
        if isinstance(w, str):
            return f"the {name} tower: {w}"
        if w[0] is not None and w[0].dtype != torch.float32:
            return "the model is not fp32"
    return None


def _project(x: torch.Tensor, w: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> torch.Tensor:
    """x Wᵀ + b in fp32 (x already in the matmul dtype; W cast to it), or a copy of x for no head."""
    if w is None:
        return x.float()   # a copy: normalised in place below
    if x.dtype == torch.float32:
        return torch.addmm(b, x, w.t()) if b is not None else x @ w.t()
    u = torch.mm(x, w.to(x.dtype).t()).float()
    return u.add_(b) if b is not None else u


def closed_form(x: torch.Tensor, t: torch.Tensor, heads: list, tau: torch.Tensor, eps: float = 0.0):
    """(i2t, t2i, [(∂W, ∂b) or None per head], ∂τ) of the module docstring's loss. x, t: (n, Fi), (n, Ft)
    features, in the heads' matmul dtype; heads: [(W, b) or (None, None)] for the image and text sides."""
    us = [_project(f, w, b) for f, (w, b) in zip((x, t), heads)]
    inv = [u.norm(dim=1, keepdim=True).clamp_min_(1e-12).reciprocal_() for u in us]   # F.normalize's eps
    uh, vh = (u.mul_(r) for u, r in zip(us, inv))
    s = tau.exp()
    n = uh.shape[0]
    S = torch.mm(uh, vh.t()).mul_(s)                     # fp32: B x B work is small, casts would cost more
    lr, lc = torch.log_softmax(S, 1), torch.log_softmax(S, 0)
    i2t, t2i = lr.diagonal().sum() * -(1 - eps), lc.diagonal().sum() * -(1 - eps)
    if eps:
        i2t, t2i = i2t - (eps / n) * lr.sum(), t2i - (eps / n) * lc.sum()
    # ∂L/∂S = (P_rows + P_cols − 2Q) / 2n, 2Q = 2(1 − ε) I + 2ε/n: the identity only touches the diagonal
    dS = lr.exp_().add_(lc.exp_())
    if eps:
        dS.sub_(2 * eps / n)
    dS.diagonal().sub_(2 * (1 - eps))
    dS.mul_(0.5 / n)
    g_tau = torch.vdot(dS.view(-1), S.view(-1)).reshape(tau.shape)
    grads = []
    for f, (w, b), y, r, other, dy in ((x, heads[0], uh, inv[0], vh, dS), (t, heads[1], vh, inv[1], uh, dS.t())):
        if w is None:
            grads.append(None)
            continue
        dyh = torch.mm(dy, other).mul_(s)                                   # ∂L/∂ŷ
        du = dyh.sub_(y * (y * dyh).sum(1, keepdim=True)).mul_(r)           # ∂L/∂y before normalising
        gw = torch.mm(du.t().contiguous().to(f.dtype), f)
        grads.append((gw.float() if gw.dtype != torch.float32 else gw, du.sum(0) if b is not None else None))
    return i2t / n, t2i / n, grads, g_tau


class ProjectorStep:
    """`step(batch)` -> LossOutput: the loss of a cached-feature batch, gradients written to `.grad`."""

    def __init__(self, core: nn.Module, loss_fn, precision: str = "fp32", compile: bool = False):
        self.core, self.eps = core, float(getattr(loss_fn, "label_smoothing", 0.0))
        self.part_name = loss_fn.part_name
        self.heads = [_head(core.visual), _head(core.text)]
        self.mm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.all_heads = all(w is not None for w, _ in self.heads)  # every cached feature feeds a matmul
        self._fn = torch.compile(closed_form, dynamic=False) if compile else closed_form

    def _grads(self, x, t, tau):
        try:
            return self._fn(x, t, self.heads, tau, self.eps)
        except Exception as e:  # noqa: BLE001 - torch.compile fails in many ways (no C++ compiler, ...)
            if self._fn is closed_form:
                raise
            log.warning("compiling the cached step failed (%s): running it eagerly",
                        str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__)
            self._fn = closed_form
            return closed_form(x, t, self.heads, tau, self.eps)

    @torch.no_grad()
    def __call__(self, batch: dict) -> LossOutput:
        dev, tau = self.core.logit_scale.device, self.core.logit_scale
        # the matmul operands in their dtype (a frozen clipforge tower's features feed û directly: fp32)
        x, t = (batch[k].to(dev, self.mm_dtype if w is not None else torch.float32, non_blocking=True)
                for k, (w, _) in zip(("image_features", "text_features"), self.heads))
        i2t, t2i, grads, g_tau = self._grads(x, t, tau.detach())
        if tau.requires_grad:
            tau.grad = g_tau
        for (w, b), g in zip(self.heads, grads):
            if g is not None:
                w.grad = g[0]
                if b is not None:
                    b.grad = g[1]
        total = (i2t + t2i) / 2
        return LossOutput(total, {self.part_name: total, "image_to_text": i2t, "text_to_image": t2i})
