"""SigLIP's pairwise sigmoid loss, chunked and distributed without any N×N matrix.

    L = −(1/N) Σ_i Σ_j log σ(z_ij · (s·⟨x_i, y_j⟩ + b)),   z = +1 on the diagonal, −1 elsewhere
      =  (1/N) [ Σ_ij softplus(S_ij + b) − Σ_i (S_ii + b) ]          (softplus(u) − softplus(−u) = u)

so the loss is a sum of softplus over all pairs (blockwise, `chunked.block_softplus_sum`) minus a cheap
diagonal term: no B×B label matrix. Init t' = ln 10 (s = 10), b = −10.

Distributed (rank r of W): the rank scores its images against its own texts (positives on the diagonal),
then passes text features around a ring W−1 times, adding negative-only blocks. Received features carry
gradient back along the ring. Nothing wider than (B_r, B_r) logits is ever formed; with chunking not even
that. The rank's row sum is divided by N/W, so DDP's averaging gives the single-process gradient.
`mode="gather"` instead gathers all text features (with gradient) and scores against them in blocks; the
ring falls back to it when ranks hold uneven batches.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import UsageError
from clipforge.losses.chunked import block_softplus_sum
from clipforge.losses.distributed import (all_gather_with_grad, gather_sizes, is_distributed,
                                          rank_and_world, ring_shift)
from clipforge.losses.registry import LossOutput, register_loss

SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)   # t'; the model returns s = exp(t')
SIGLIP_INIT_LOGIT_BIAS = -10.0


def _softplus_sum(img, txt, scale, bias, chunk_size):
    """Σ over the (B, M) pairs of softplus(s·img·txtᵀ + b); scalar."""
    if chunk_size is None:
        logits = scale * img @ txt.t()                                   # (B, M)
        if bias is not None:
            logits = logits + bias
        return F.softplus(logits).sum()
    return block_softplus_sum(img, txt, scale, bias, chunk_size)


def _positive_sum(img, txt, scale, bias):
    """Σ_i (s·⟨x_i, y_i⟩ + b) over the matched pairs; scalar."""
    pos = scale * (img * txt).sum(-1)                                    # (B,)
    return pos.sum() + (0.0 if bias is None else bias * img.shape[0])


def siglip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor], *, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Sigmoid loss of one batch. img, txt: (B, D); logit_scale exp'd scalar; logit_bias scalar or None."""
    total = _softplus_sum(img, txt, logit_scale, logit_bias, chunk_size) \
        - _positive_sum(img, txt, logit_scale, logit_bias)
    return total / img.shape[0]


@register_loss("siglip")
class SigLIPLoss(nn.Module):
    """Sigmoid loss over a `CLIPOutput` (uses `logit_bias`; 0 when the model has none).

    chunk_size: rows per block (None: dense per-block logits). mode: "ring" (pass text features between
    neighbours) or "gather" (all-gather text features). distributed: None = auto.
    """

    MODES = ("ring", "gather")
    needs_logit_bias = True  # the trainer refuses a model without one

    def __init__(self, chunk_size: Optional[int] = None, mode: str = "ring",
                 distributed: Optional[bool] = None):
        super().__init__()
        if mode not in self.MODES:
            raise UsageError(f"unknown siglip mode {mode!r}; valid modes: {', '.join(self.MODES)}")
        self.chunk_size, self.mode, self.distributed = chunk_size, mode, distributed

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        img, txt = output.image_embeds, output.text_embeds
        scale, bias = output.logit_scale, output.logit_bias
        use_dist = is_distributed() if self.distributed is None else self.distributed
        if not use_dist:
            total = siglip_loss(img, txt, scale, bias, chunk_size=self.chunk_size)
            return LossOutput(total, {"siglip": total.detach()})

        _, world = rank_and_world()
        positives = _positive_sum(img, txt, scale, bias)
        # The ring exchanges equal shapes; uneven local batches (a last partial batch) fall back to gather.
        ring = self.mode == "ring" and len(set(gather_sizes(img.shape[0], img.device, None))) == 1
        if not ring:
            txt_all, _ = all_gather_with_grad(txt)                       # (N, D)
            n_global = txt_all.shape[0]
            pairs = _softplus_sum(img, txt_all, scale, bias, self.chunk_size)
        else:
            # Own texts first, then the texts of rank r−1, r−2, ... (negatives only).
            n_global = img.shape[0] * world
            pairs = _softplus_sum(img, txt, scale, bias, self.chunk_size)
            neighbour = txt
            for _ in range(world - 1):
                neighbour = ring_shift(neighbour)
                pairs = pairs + _softplus_sum(img, neighbour, scale, bias, self.chunk_size)
        total = (pairs - positives) / (n_global / world)
        return LossOutput(total, {"siglip": total.detach()})
