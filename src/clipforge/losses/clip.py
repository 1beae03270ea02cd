"""CLIP's symmetric InfoNCE loss, chunked and distributed.

    logits = s · img @ txtᵀ    (s = exp(t), t learnable, init ln(1/0.07), clamped ≤ ln 100 after each step)
    loss   = ½ [ CE(rows, diagonal) + CE(columns, diagonal) ]

Per row i with label smoothing ε (ALIGN uses ε = 0.1, CLIP ε = 0):
    CE_i = [lse_j(S_ij) − S_i,pos] + ε·S_i,pos − (ε/N)·Σ_j S_ij,    Σ_j S_ij = s · q_i·(Σ_j k_j)
so the smoothing term costs one vector sum, and the only N-wide reduction is the bracket, which
`chunked.block_cross_entropy` computes without an N×N matrix, in a form that stays accurate near zero loss
(with `dot_precision` float64, the default on CPUs and full-rate-float64 GPUs: within 1e-6 relative of the
float64 loss at logit scale 100; float32 blocks: 1–7e-6). The dense path is F.cross_entropy, as open_clip.

Distributed (one rank of W, local batch B_r, global N): the rank's images are scored against ALL texts and
its texts against ALL images (features gathered with gradient), and the sum of those rows is divided by
N/W. DDP's gradient averaging (÷W) then makes every gradient exactly that of one process on the whole batch,
even when ranks hold uneven batches; the mean of the per-rank losses is the global loss.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import UsageError
from clipforge.losses.chunked import DOT_PRECISIONS, block_cross_entropy
from clipforge.losses.distributed import all_gather_with_grad, is_distributed, rank_and_world
from clipforge.losses.registry import LossOutput, register_loss
from clipforge.models.unwrap import unwrap_model

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)   # t at init; the model stores t, forward returns exp(t)
MAX_LOG_LOGIT_SCALE = math.log(100)


def _smoothing(q: torch.Tensor, k_all: torch.Tensor, k_pos: torch.Tensor, scale: torch.Tensor,
               eps: float) -> torch.Tensor:
    """Per-row label-smoothing term ε·S_i,pos − (ε/N)·Σ_j S_ij. q: (B, D) rows, k_pos: (B, D) their
    positives, k_all: (N, D) all columns. Returns (B,)."""
    pos = scale * (q * k_pos).sum(-1)                                # (B,)
    return eps * pos - (eps / k_all.shape[0]) * scale * (q @ k_all.sum(0))


def contrastive_terms(img: torch.Tensor, txt: torch.Tensor, img_all: torch.Tensor, txt_all: torch.Tensor,
                      offset: int, scale: torch.Tensor, *, chunk_size: Optional[int] = None,
                      label_smoothing: float = 0.0, denom: Optional[float] = None,
                      dot_precision: str = "auto"):
    """(image→text, text→image) cross-entropy terms for local rows against gathered columns.

    img, txt: (B, D) this rank's features; img_all, txt_all: (N, D) all ranks' features (the same tensors
    when not distributed); offset: index of this rank's first row in the gathered batch; denom: divisor of
    the row sums (default B); dot_precision: working precision of the chunked blocks (`chunked.py`).
    Returns two scalars.
    """
    b, eps = img.shape[0], float(label_smoothing)
    denom = float(b if denom is None else denom)
    single = img_all is img and txt_all is txt
    if chunk_size is None:
        # Dense reference path: holds (B, N) logits (N×N on one process).
        labels = torch.arange(offset, offset + b, device=img.device)
        logits_i = scale * img @ txt_all.t()                         # (B, N)
        logits_t = logits_i.t() if single else scale * txt @ img_all.t()
        i2t = F.cross_entropy(logits_i, labels, label_smoothing=eps, reduction="sum")
        t2i = F.cross_entropy(logits_t, labels, label_smoothing=eps, reduction="sum")
        return i2t / denom, t2i / denom
    if single:
        # One pass over row blocks gives both the row and the column cross-entropies.
        row_ce, col_ce = block_cross_entropy(img, txt, scale, chunk_size, want_cols=True,
                                             dot_precision=dot_precision)
    else:
        row_ce, _ = block_cross_entropy(img, txt_all, scale, chunk_size, offset, want_cols=False,
                                        dot_precision=dot_precision)
        col_ce, _ = block_cross_entropy(txt, img_all, scale, chunk_size, offset, want_cols=False,
                                        dot_precision=dot_precision)
    if eps:
        row_ce = row_ce + _smoothing(img, txt_all, txt, scale, eps)
        col_ce = col_ce + _smoothing(txt, img_all, img, scale, eps)
    return row_ce.sum() / denom, col_ce.sum() / denom


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, *,
              chunk_size: Optional[int] = None, dot_precision: str = "auto") -> torch.Tensor:
    """Symmetric InfoNCE of one batch. img, txt: (B, D) normalised features; logit_scale: exp'd scalar."""
    i2t, t2i = contrastive_terms(img, txt, img, txt, 0, logit_scale, chunk_size=chunk_size,
                                 dot_precision=dot_precision)
    return (i2t + t2i) / 2


def gather_pairs(img: torch.Tensor, txt: torch.Tensor, distributed: Optional[bool]):
    """Gather both modalities with gradient when running distributed.
    Returns (img_all, txt_all, offset, denom) with denom = N/W (see the module docstring)."""
    if not (is_distributed() if distributed is None else distributed):
        return img, txt, 0, float(img.shape[0])
    img_all, offset = all_gather_with_grad(img)
    txt_all, _ = all_gather_with_grad(txt)
    _, world = rank_and_world()
    return img_all, txt_all, offset, img_all.shape[0] / world


@register_loss("clip")
class CLIPLoss(nn.Module):
    """InfoNCE over `output.image_embeds` / `output.text_embeds` at `output.logit_scale`.

    chunk_size: rows per block for the memory-bounded path (None: dense logits).
    distributed: gather across ranks (None: whenever torch.distributed is initialised with >1 rank).
    dot_precision: working precision of the chunked blocks, auto | float32 | float64 (`chunked.py`).
    """

    label_smoothing = 0.0
    part_name = "clip"     # key of the contrastive term in LossOutput.parts

    def __init__(self, chunk_size: Optional[int] = None, distributed: Optional[bool] = None,
                 dot_precision: str = "auto"):
        super().__init__()
        if dot_precision not in DOT_PRECISIONS:
            raise UsageError(f"`dot_precision` must be one of {', '.join(DOT_PRECISIONS)}, got {dot_precision!r}")
        self.chunk_size = chunk_size
        self.distributed = distributed
        self.dot_precision = dot_precision

    def terms(self, output) -> tuple:
        """(image→text, text→image) terms of `output`'s pairs, gathered across ranks when distributed."""
        img, txt = output.image_embeds, output.text_embeds
        img_all, txt_all, offset, denom = gather_pairs(img, txt, self.distributed)
        return contrastive_terms(img, txt, img_all, txt_all, offset, output.logit_scale,
                                 chunk_size=self.chunk_size, label_smoothing=self.label_smoothing,
                                 denom=denom, dot_precision=self.dot_precision)

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        i2t, t2i = self.terms(output)
        total = (i2t + t2i) / 2
        return LossOutput(total, {self.part_name: total.detach(), "image_to_text": i2t.detach(),
                                  "text_to_image": t2i.detach()})


@torch.no_grad()
def clamp_logit_scale_(model: nn.Module, max_log: float = MAX_LOG_LOGIT_SCALE,
                       min_log: Optional[float] = None) -> None:
    """Clamp the model's log-space `logit_scale` parameter in place (call after each optimizer step)."""
    param = unwrap_model(model).logit_scale
    param.clamp_(min=min_log, max=max_log)
