"""FILIP: token-wise late interaction instead of one pooled embedding per side.

With normalised patch tokens x_i (K, D) (no class token) and text tokens y_j (R_j real tokens, D):

    s^I_ij = mean_k  max_{r real}  ⟨x_ik, y_jr⟩      image i → text j
    s^T_ij = mean_{r real of i}  max_k ⟨y_ir, x_jk⟩  text i → image j     (not the transpose of s^I)
    L      = ½ [ CE(rows of s·s^I) + CE(rows of s·s^T) ],  diagonal labels, label smoothing 0.1

Uses `CLIPOutput.image_tokens` (B, K, D), `text_tokens` (B, R, D), `text_mask` (B, R) (ask the model for
tokens). The similarity is formed for `chunk_size` images at a time ((c, N, K, R) floats per block); the
paper's "keep the top 25% of tokens" option is not implemented. Distributed: tokens gathered with gradient,
local rows against all columns, as in `clip`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import UsageError
from clipforge.losses.distributed import all_gather_with_grad, is_distributed, rank_and_world
from clipforge.losses.registry import LossOutput, register_loss


def token_similarities(x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
                       chunk_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (M, K, D) image tokens; y: (N, R, D) text tokens; y_mask: (N, R) bool (True = real token).
    Returns s_img (M, N) = image i → text j and s_txt (N, M) = text j → image i."""
    m = x.shape[0]
    chunk = m if chunk_size is None else chunk_size
    neg = torch.finfo(x.dtype).min
    s_img, s_txt = [], []
    count = y_mask.sum(1).clamp(min=1).to(x.dtype)                          # (N,)
    for s0 in range(0, m, chunk):
        sim = torch.einsum("ikd,jrd->ijkr", x[s0:s0 + chunk], y)            # (c, N, K, R)
        # Image → text: max over the text's real tokens, mean over patches.
        s_img.append(sim.masked_fill(~y_mask[None, :, None, :], neg).amax(3).mean(2))      # (c, N)
        # Text → image: max over patches, mean over the text's real tokens.
        best = sim.amax(2) * y_mask[None].to(x.dtype)                       # (c, N, R)
        s_txt.append((best.sum(2) / count[None]).t())                       # (N, c)
    return torch.cat(s_img, 0), torch.cat(s_txt, 1)


def filip_loss(x, y, y_mask, logit_scale, *, label_smoothing: float = 0.1,
               chunk_size: Optional[int] = None) -> torch.Tensor:
    """FILIP loss of one batch (tokens already normalised)."""
    s_img, s_txt = token_similarities(x, y, y_mask, chunk_size)
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logit_scale * s_img, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(logit_scale * s_txt, labels, label_smoothing=label_smoothing)) / 2


@register_loss("filip")
class FILIPLoss(nn.Module):
    def __init__(self, label_smoothing: float = 0.1, chunk_size: Optional[int] = None,
                 distributed: Optional[bool] = None):
        super().__init__()
        self.label_smoothing, self.chunk_size, self.distributed = float(label_smoothing), chunk_size, distributed

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        x, y, mask = output.image_tokens, output.text_tokens, output.text_mask
        if x is None or y is None or mask is None:
            raise UsageError("the filip loss needs image_tokens, text_tokens and text_mask in the model "
                             "output (ask the model to return token features)")
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        b, eps = x.shape[0], self.label_smoothing
        if is_distributed() if self.distributed is None else self.distributed:
            x_all, offset = all_gather_with_grad(x)
            y_all, _ = all_gather_with_grad(y)
            mask_all, _ = all_gather_with_grad(mask)
            denom = x_all.shape[0] / rank_and_world()[1]
        else:
            x_all, y_all, mask_all, offset, denom = x, y, mask, 0, float(b)
        labels = torch.arange(offset, offset + b, device=x.device)
        s_img, _ = token_similarities(x, y_all, mask_all, self.chunk_size)   # (B, N) local images → all texts
        _, s_txt = token_similarities(x_all, y, mask, self.chunk_size)       # (B, N) local texts → all images
        scale = output.logit_scale
        i2t = F.cross_entropy(scale * s_img, labels, label_smoothing=eps, reduction="sum") / denom
        t2i = F.cross_entropy(scale * s_txt, labels, label_smoothing=eps, reduction="sum") / denom
        total = (i2t + t2i) / 2
        return LossOutput(total, {"filip": total.detach(), "image_to_text": i2t.detach(),
                                  "text_to_image": t2i.detach()})
