"""FILIP: token-wise late interaction instead of one pooled embedding per side.

With normalised patch tokens x_i (K, D) (no class token) and text tokens y_j (R_j real tokens, D):

    s^I_ij = mean_k  max_{r real}  ⟨x_ik, y_jr⟩      image i → text j
    s^T_ij = mean_{r real of i}  max_k ⟨y_ir, x_jk⟩  text i → image j     (not the transpose of s^I)
    L      = ½ [ CE(rows of s·s^I) + CE(rows of s·s^T) ],  diagonal labels, label smoothing 0.1

Uses `CLIPOutput.image_tokens` (B, K, D), `text_tokens` (B, R, D), `text_mask` (B, R): the loss declares
`needs_token_features`, and the trainer asks the model for them.

Memory: the token similarities of `chunk_size` images against all texts, (c, N, K, R) floats, exist for one
block at a time, in the forward and again in the backward: each block is recomputed under autograd when the
gradient is needed (activation checkpointing of the block), so nothing of size N·N·K·R is ever kept.

`token_fraction` (the paper used 0.25 to cut communication): before gathering, each image keeps its top
fraction of patches and each text its top fraction of real tokens, ranked by the token's best similarity to
any token of the other modality in the local batch (its "token-wise maximum similarity"); the others are
masked out of both similarities. Distributed: tokens gathered with gradient, local rows against all columns,
as in `clip`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.errors import UsageError
from clipforge.losses.distributed import all_gather_with_grad, is_distributed, rank_and_world
from clipforge.losses.registry import LossOutput, register_loss


def _block_similarities(x, x_mask, y, y_mask):
    """x (c, K, D), x_mask (c, K); y (N, R, D), y_mask (N, R) -> s_img (c, N), s_txt (c, N) (text j → image i
    in column i's transposed layout: s_txt[i, j] = text j → image i)."""
    neg = torch.finfo(x.dtype).min
    sim = torch.einsum("ikd,jrd->ijkr", x, y)                                  # (c, N, K, R)
    xm, ym = x_mask.to(x.dtype), y_mask.to(x.dtype)
    best_r = sim.masked_fill(~y_mask[None, :, None, :], neg).amax(3)           # (c, N, K): best text token
    s_img = (best_r * xm[:, None]).sum(2) / xm.sum(1).clamp(min=1)[:, None]    # mean over real patches
    best_k = sim.masked_fill(~x_mask[:, None, :, None], neg).amax(2)           # (c, N, R): best patch
    s_txt = (best_k * ym[None]).sum(2) / ym.sum(1).clamp(min=1)[None]          # mean over real tokens
    return s_img, s_txt


def token_similarities(x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
                       chunk_size: Optional[int] = None, x_mask: Optional[torch.Tensor] = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (M, K, D) image tokens; y: (N, R, D) text tokens; masks bool (True = real token; x_mask default all).
    Returns s_img (M, N) = image i → text j and s_txt (N, M) = text j → image i. Blocks of `chunk_size`
    images are recomputed in the backward instead of kept (bounded memory)."""
    m = x.shape[0]
    x_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if x_mask is None else x_mask
    chunk = m if chunk_size is None else int(chunk_size)
    keep_graph = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    s_img, s_txt = [], []
    for s0 in range(0, m, chunk):
        args = (x[s0:s0 + chunk], x_mask[s0:s0 + chunk], y, y_mask)
        if keep_graph and chunk_size is not None:
            a, b = checkpoint(_block_similarities, *args, use_reentrant=False)
        else:
            a, b = _block_similarities(*args)
        s_img.append(a)
        s_txt.append(b)
    return torch.cat(s_img, 0), torch.cat(s_txt, 0).t()


@torch.no_grad()
def top_token_masks(x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
                    fraction: float, chunk_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's token selection: per image the ceil(fraction·K) patches, per text the ceil(fraction·R_j) real
    tokens with the highest similarity to any real token of the other modality in (x, y). New masks."""
    neg = torch.finfo(x.dtype).min
    m, chunk = x.shape[0], x.shape[0] if chunk_size is None else int(chunk_size)
    x_score = torch.full(x.shape[:2], neg, dtype=x.dtype, device=x.device)      # (M, K)
    y_score = torch.full(y.shape[:2], neg, dtype=x.dtype, device=x.device)      # (N, R)
    for s0 in range(0, m, chunk):
        sim = torch.einsum("ikd,jrd->ijkr", x[s0:s0 + chunk], y)                # (c, N, K, R)
        sim = sim.masked_fill(~y_mask[None, :, None, :], neg).masked_fill(~x_mask[s0:s0 + chunk, None, :, None], neg)
        x_score[s0:s0 + chunk] = sim.amax(dim=(1, 3))
        y_score = torch.maximum(y_score, sim.amax(dim=(0, 2)))

    def keep_top(score, mask):
        k = torch.ceil(mask.sum(1).to(torch.float64) * fraction).clamp(min=1).long()   # (rows,)
        order = score.masked_fill(~mask, neg).argsort(1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                                .expand_as(order))
        return mask & (rank < k[:, None])

    return keep_top(x_score, x_mask), keep_top(y_score, y_mask)


def filip_loss(x, y, y_mask, logit_scale, *, label_smoothing: float = 0.1,
               chunk_size: Optional[int] = None) -> torch.Tensor:
    """FILIP loss of one batch (tokens already normalised)."""
    s_img, s_txt = token_similarities(x, y, y_mask, chunk_size)
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logit_scale * s_img, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(logit_scale * s_txt, labels, label_smoothing=label_smoothing)) / 2


@register_loss("filip")
class FILIPLoss(nn.Module):
    """Token-wise max-similarity contrastive loss (FILIP). label_smoothing: 0.1 as the paper.
    chunk_size: images per block of token similarities (bounded memory; None: one block).
    token_fraction: keep this top fraction of tokens per image and per text (1.0: all; the paper used 0.25)."""

    needs_token_features = True

    def __init__(self, label_smoothing: float = 0.1, chunk_size: Optional[int] = None,
                 token_fraction: float = 1.0, distributed: Optional[bool] = None):
        super().__init__()
        if not 0.0 < float(token_fraction) <= 1.0:
            raise UsageError(f"`token_fraction` must be in (0, 1], got {token_fraction}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise UsageError(f"`chunk_size` must be >= 1, got {chunk_size}")
        self.label_smoothing, self.chunk_size, self.distributed = float(label_smoothing), chunk_size, distributed
        self.token_fraction = float(token_fraction)

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        x, y, y_mask = output.image_tokens, output.text_tokens, output.text_mask
        if x is None or y is None or y_mask is None:
            raise UsageError("the filip loss needs image_tokens, text_tokens and text_mask in the model "
                             "output (ask the model to return token features)")
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        x_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if self.token_fraction < 1.0:
            x_mask, y_mask = top_token_masks(x, x_mask, y, y_mask, self.token_fraction, self.chunk_size)
        b, eps = x.shape[0], self.label_smoothing
        if is_distributed() if self.distributed is None else self.distributed:
            x_all, offset = all_gather_with_grad(x)
            y_all, _ = all_gather_with_grad(y)
            xm_all, _ = all_gather_with_grad(x_mask)
            ym_all, _ = all_gather_with_grad(y_mask)
            denom = x_all.shape[0] / rank_and_world()[1]
        else:
            x_all, y_all, xm_all, ym_all, offset, denom = x, y, x_mask, y_mask, 0, float(b)
        labels = torch.arange(offset, offset + b, device=x.device)
        s_img, _ = token_similarities(x, y_all, ym_all, self.chunk_size, x_mask)     # (B, N) images → texts
        _, s_txt = token_similarities(x_all, y, y_mask, self.chunk_size, xm_all)     # (B, N) texts → images
        scale = output.logit_scale
        i2t = F.cross_entropy(scale * s_img, labels, label_smoothing=eps, reduction="sum") / denom
        t2i = F.cross_entropy(scale * s_txt, labels, label_smoothing=eps, reduction="sum") / denom
        total = (i2t + t2i) / 2
        return LossOutput(total, {"filip": total.detach(), "image_to_text": i2t.detach(),
                                  "text_to_image": t2i.detach()})
