"""Long-CLIP's fine-tuning objective: fine-grained alignment with the long caption, coarse alignment of the
image's primary components with a short summary.

    L_long  = CLIP(img, long caption)                              label smoothing 0.1
    L_short = CLIP(PCA_k(img), first sentence of the caption)      k = 32, label smoothing 0.1
    L       = L_long + w·L_short                                   (w = 1 in the released code)

PCA_k(img): the batch's image features centred, projected on their top-k principal directions (SVD) and
mapped back to the feature space (not re-normalised) — Long-CLIP's `PCA` in `model_longclip.py`, computed
on each rank's local features before they are gathered. Here the principal directions are treated as
constants in the backward (torch's SVD backward is unstable when singular values nearly coincide; the
released code differentiates through it): gradients reach the features through the projection.

Confirmed against github.com/beichenzbc/Long-CLIP (`train/train.py`, `model/model_longclip.py`,
`train/sharegpt4v.py`): k = 32, label smoothing 0.1 in both terms, summed, short caption =
`caption.split(". ")[0]` (here `data.captions.first_sentence`). The loss declares `needs_short_captions`;
use it on a model stretched with `clipforge stretch` (`models.stretch`).
"""
from __future__ import annotations

from typing import Optional

import torch

from clipforge.errors import UsageError
from clipforge.losses.clip import CLIPLoss, contrastive_terms, gather_pairs
from clipforge.losses.registry import LossOutput, register_loss


def primary_components(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, D) -> (B, D): x reconstructed from its top-k principal components (mean kept)."""
    mean = x.mean(0, keepdim=True)
    xc = x - mean
    wide = xc.detach().to(torch.promote_types(x.dtype, torch.float32))
    _, _, vt = torch.linalg.svd(wide, full_matrices=False)            # vt: (min(B, D), D)
    v = vt[:k].t().to(x.dtype)                                       # (D, k) top-k directions, constants
    return xc @ v @ v.t() + mean


@register_loss("longclip")
class LongCLIPLoss(CLIPLoss):
    """CLIP on the long caption + CLIP between the images' top-`pca_dim` components and each caption's first
    sentence (Long-CLIP). short_weight: weight of the short term. label_smoothing: both terms (0.1)."""

    needs_short_captions = True
    part_name = "long"

    def __init__(self, pca_dim: int = 32, short_weight: float = 1.0, label_smoothing: float = 0.1,
                 chunk_size: Optional[int] = None, distributed: Optional[bool] = None,
                 dot_precision: str = "auto"):
        super().__init__(chunk_size=chunk_size, distributed=distributed, dot_precision=dot_precision)
        if int(pca_dim) < 1:
            raise UsageError(f"`pca_dim` must be >= 1, got {pca_dim}")
        self.pca_dim, self.short_weight = int(pca_dim), float(short_weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        i2t, t2i = self.terms(output)
        long = (i2t + t2i) / 2
        short_txt = None if batch is None else batch.get("short_text_embeds")
        if short_txt is None:
            raise UsageError("the longclip loss needs batch['short_text_embeds'] (each caption's first sentence)")
        img = primary_components(output.image_embeds, self.pca_dim)
        img_all, txt_all, offset, denom = gather_pairs(img, short_txt, self.distributed)
        s_i2t, s_t2i = contrastive_terms(img, short_txt, img_all, txt_all, offset, output.logit_scale,
                                         chunk_size=self.chunk_size, label_smoothing=self.label_smoothing,
                                         denom=denom, dot_precision=self.dot_precision)
        short = (s_i2t + s_t2i) / 2
        total = long + self.short_weight * short
        return LossOutput(total, {"long": long.detach(), "short": short.detach(), "longclip": total.detach()})
