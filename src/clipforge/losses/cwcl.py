"""CWCL: continuously weighted contrastive loss, for aligning a trainable tower to a frozen one.

With p the frozen modality's normalised embeddings and q the trainable one's, every pair (i, j) is a
partial positive weighted by how alike p_i and p_j are, instead of only the diagonal:

    w_ij = ⟨p_i, p_j⟩/2 + 0.5                         (in [0, 1]; w_ii = 1)
    L    = −(1/N) Σ_i (1/Σ_j w_ij) Σ_j w_ij log softmax_j(s·⟨p_i, q_j⟩)       (s = 1/τ = logit_scale)

What the paper confirms is this p→q direction; the reverse (q→p: rows q_j, softmax over p, same weights)
and the temperature are options here. Holds (B, N) weights and logits per rank: meant for fine-tuning
batches, not for the 32k-batch regime (no chunked variant).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from clipforge.errors import UsageError
from clipforge.losses.clip import gather_pairs
from clipforge.losses.registry import LossOutput, register_loss


def _weighted_rows(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, scale) -> torch.Tensor:
    """Σ over rows of −Σ_j w_ij log softmax_j(s·rows_i·cols_j) / Σ_j w_ij. rows (B, D), cols (N, D), w (B, N)."""
    logp = torch.log_softmax(scale * rows @ cols.t(), dim=1)                # (B, N)
    return -((weights * logp).sum(1) / weights.sum(1)).sum()


def cwcl_terms(p: torch.Tensor, q: torch.Tensor, p_all: torch.Tensor, q_all: torch.Tensor, logit_scale,
               denom: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(p→q, q→p) terms for local rows p, q (B, D) against gathered p_all, q_all (N, D)."""
    weights = (p @ p_all.t()).detach() / 2 + 0.5       # (B, N); p is frozen: the weights carry no gradient
    return (_weighted_rows(p, q_all, weights, logit_scale) / denom,
            _weighted_rows(q, p_all, weights, logit_scale) / denom)


def cwcl_loss(p: torch.Tensor, q: torch.Tensor, logit_scale, *, reverse: bool = False) -> torch.Tensor:
    """CWCL of one batch; p: frozen modality (B, D), q: trainable modality (B, D). reverse adds q→p (mean)."""
    fwd, bwd = cwcl_terms(p, q, p, q, logit_scale, float(p.shape[0]))
    return (fwd + bwd) / 2 if reverse else fwd


@register_loss("cwcl")
class CWCLLoss(nn.Module):
    """frozen: which tower of the CLIPOutput is the frozen reference ("image" or "text").
    reverse: also the q→p direction. temperature: fixed τ overriding the model's logit_scale (None: use it)."""

    def __init__(self, frozen: str = "image", reverse: bool = False, temperature: Optional[float] = None,
                 distributed: Optional[bool] = None):
        super().__init__()
        if frozen not in ("image", "text"):
            raise UsageError(f"cwcl frozen must be 'image' or 'text', got {frozen!r}")
        self.frozen, self.reverse, self.temperature, self.distributed = frozen, reverse, temperature, distributed

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        img, txt = output.image_embeds, output.text_embeds
        img_all, txt_all, _, denom = gather_pairs(img, txt, self.distributed)
        p, q, p_all, q_all = (img, txt, img_all, txt_all) if self.frozen == "image" else (txt, img, txt_all, img_all)
        scale = output.logit_scale if self.temperature is None else 1.0 / self.temperature
        fwd, bwd = cwcl_terms(p, q, p_all, q_all, scale, denom)
        total = (fwd + bwd) / 2 if self.reverse else fwd
        parts = {"cwcl": total.detach(), "frozen_to_trained": fwd.detach()}
        if self.reverse:
            parts["trained_to_frozen"] = bwd.detach()
        return LossOutput(total, parts)
