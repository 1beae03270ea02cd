"""SigLIP's pairwise sigmoid loss, chunked and distributed without any N×N matrix.

    L = −(1/N) Σ_i Σ_j log σ(z_ij · (s·⟨x_i, y_j⟩ + b)),   z = +1 on the diagonal, −1 elsewhere
      =  (1/N) Σ_ij softplus(−z_ij (S_ij + b))

summed blockwise by `chunked.block_softplus_sum` (no B×B matrix, not even a label matrix). Every term is
its own softplus, positives included: rewriting a positive's softplus(−x) as softplus(x) − x would cancel
catastrophically for the large x of a trained model. Init t' = ln 10 (s = 10), b = −10.

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


def _pair_loss_sum(img, txt, scale, bias, chunk_size, offset: Optional[int]):
    """Σ over the (B, M) pairs of −log σ(z_ij (s·⟨x_i, y_j⟩ + b)); z = +1 at (i, offset + i) when `offset` is
    given, −1 elsewhere. Each term is one softplus (−logsigmoid, no threshold), positives included: exact
    gradients above any logit, and full precision near zero loss."""
    if chunk_size is not None:
        return block_softplus_sum(img, txt, scale, bias, chunk_size, offset)
    logits = scale * img @ txt.t()                                       # (B, M)
    if bias is not None:
        logits = logits + bias
    if offset is None:
        return -F.logsigmoid(-logits).sum()
    r = torch.arange(img.shape[0], device=img.device)
    labels = torch.full_like(logits, -1.0)
    labels[r, offset + r] = 1.0
    return -F.logsigmoid(labels * logits).sum()                          # open_clip's dense formula


def siglip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor], *, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Sigmoid loss of one batch. img, txt: (B, D); logit_scale exp'd scalar; logit_bias scalar or None."""
    return _pair_loss_sum(img, txt, logit_scale, logit_bias, chunk_size, 0) / img.shape[0]


@register_loss("siglip")
class SigLIPLoss(nn.Module):
    """Sigmoid loss over a `CLIPOutput` (uses `logit_bias`; 0 when the model has none).

    chunk_size: rows per block (None: dense per-block logits). mode: "ring" (pass text features between
    neighbours) or "gather" (all-gather text features). distributed: None = auto.
    """

    MODES = ("ring", "gather")

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
        # The ring exchanges equal shapes; uneven local batches (a last partial batch) fall back to gather.
        ring = self.mode == "ring" and len(set(gather_sizes(img.shape[0], img.device, None))) == 1
        if not ring:
            txt_all, offset = all_gather_with_grad(txt)                  # (N, D); own texts at offset
            n_global = txt_all.shape[0]
            pairs = _pair_loss_sum(img, txt_all, scale, bias, self.chunk_size, offset)
        else:
            # Own texts first (positives on the diagonal), then those of rank r−1, r−2, ... (negatives only).
            n_global = img.shape[0] * world
            pairs = _pair_loss_sum(img, txt, scale, bias, self.chunk_size, 0)
            neighbour = txt
            for _ in range(world - 1):
                neighbour = ring_shift(neighbour)
                pairs = pairs + _pair_loss_sum(img, neighbour, scale, bias, self.chunk_size, None)
        total = pairs / (n_global / world)
        return LossOutput(total, {"siglip": total.detach()})
