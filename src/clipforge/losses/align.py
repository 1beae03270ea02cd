"""ALIGN's loss: CLIP's symmetric cross-entropy with label smoothing (ε = 0.1) and logits ⟨x, y⟩/σ.

σ is a learnable temperature initialised at 1.0. The model stores t = ln(1/σ) as its `logit_scale`
parameter and returns s = exp(t) = 1/σ, so the loss is `contrastive_terms` with `label_smoothing=ε`.
"""
from __future__ import annotations

from typing import Optional

import torch

from clipforge.losses.clip import CLIPLoss, contrastive_terms
from clipforge.losses.registry import register_loss

ALIGN_INIT_LOGIT_SCALE = 0.0    # t = ln(1/σ) with σ = 1.0


def align_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, *,
               label_smoothing: float = 0.1, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Symmetric label-smoothed cross-entropy of one batch. img, txt: (B, D); logit_scale = 1/σ."""
    i2t, t2i = contrastive_terms(img, txt, img, txt, 0, logit_scale, chunk_size=chunk_size,
                                 label_smoothing=label_smoothing)
    return (i2t + t2i) / 2


@register_loss("align")
class ALIGNLoss(CLIPLoss):
    """`CLIPLoss` with label smoothing (same chunking and distributed gather)."""

    part_name = "align"

    def __init__(self, label_smoothing: float = 0.1, chunk_size: Optional[int] = None,
                 distributed: Optional[bool] = None, dot_precision: str = "auto"):
        super().__init__(chunk_size=chunk_size, distributed=distributed, dot_precision=dot_precision)
        self.label_smoothing = float(label_smoothing)
