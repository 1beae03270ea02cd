"""CWCL: continuously weighted contrastive loss (Srinivasa et al., NeurIPS 2023), for aligning a trainable
tower to a frozen, pretrained one.

With p the frozen modality's normalised embeddings and q the trainable one's, every pair (i, j) is a
partial positive weighted by how alike samples i and j are *within* the frozen modality, instead of only
the diagonal:

    w_ij = ⟨p_i, p_j⟩/2 + 0.5                         (in [0, 1]; w_ii = 1)
    L    = −(1/N) Σ_i (1/Σ_j w_ij) Σ_j w_ij log softmax_j(s·⟨p_i, q_j⟩)       (s = 1/τ = logit_scale)

`weights` chooses where the intra-modal similarities come from:
  "tower"    the frozen tower's own embeddings p (the paper's setting: lock that tower, e.g. `model.lock_image`);
  "teacher"  a frozen teacher's embeddings of that modality, stored by `clipforge data reinforce` and
             replayed per sample (`needs_teacher_embeddings`): the teacher's structure is transferred even
             when both of the model's towers train.

Confirmed from the paper: the weighting by the pretrained modality's intra-modal similarity and the p→q
direction. The reverse direction (q→p: rows q_j, softmax over p, same weights) and the temperature are
options here, not confirmed. Holds (B, N) weights and logits per rank: meant for fine-tuning batches, not
for the 32k-batch regime (no chunked variant).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import UsageError
from clipforge.losses.clip import gather_pairs
from clipforge.losses.distributed import all_gather_with_grad, is_distributed
from clipforge.losses.registry import LossOutput, register_loss

WEIGHTS = ("tower", "teacher")


def _weighted_rows(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, scale) -> torch.Tensor:
    """Σ over rows of −Σ_j w_ij log softmax_j(s·rows_i·cols_j) / Σ_j w_ij. rows (B, D), cols (N, D), w (B, N)."""
    logp = torch.log_softmax(scale * rows @ cols.t(), dim=1)                # (B, N)
    return -((weights * logp).sum(1) / weights.sum(1)).sum()


def intra_modal_weights(p: torch.Tensor, p_all: torch.Tensor) -> torch.Tensor:
    """w_ij = ⟨p_i, p_j⟩/2 + 0.5 for local rows p (B, D) against all p_all (N, D); no gradient."""
    p, p_all = F.normalize(p.detach(), dim=-1), F.normalize(p_all.detach(), dim=-1)
    return p @ p_all.t() / 2 + 0.5


def cwcl_terms(p: torch.Tensor, q: torch.Tensor, p_all: torch.Tensor, q_all: torch.Tensor, logit_scale,
               denom: float, weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(p→q, q→p) terms for local rows p, q (B, D) against gathered p_all, q_all (N, D). weights (B, N):
    default the intra-modal similarities of p."""
    w = intra_modal_weights(p, p_all) if weights is None else weights.detach()
    return (_weighted_rows(p, q_all, w, logit_scale) / denom,
            _weighted_rows(q, p_all, w, logit_scale) / denom)


def cwcl_loss(p: torch.Tensor, q: torch.Tensor, logit_scale, *, reverse: bool = False,
              teacher: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CWCL of one batch; p: frozen modality (B, D), q: trainable modality (B, D). reverse adds q→p (mean).
    teacher: (B, D_t) embeddings whose intra-modal similarities replace p's as the weights."""
    w = None if teacher is None else intra_modal_weights(teacher, teacher)
    fwd, bwd = cwcl_terms(p, q, p, q, logit_scale, float(p.shape[0]), w)
    return (fwd + bwd) / 2 if reverse else fwd


@register_loss("cwcl")
class CWCLLoss(nn.Module):
    """frozen: which tower of the CLIPOutput is the frozen reference ("image" or "text").
    weights: "tower" (that tower's own similarities) or "teacher" (a stored teacher's, of that modality).
    reverse: also the q→p direction. temperature: fixed τ overriding the model's logit_scale (None: use it)."""

    def __init__(self, frozen: str = "image", weights: str = "tower", reverse: bool = False,
                 temperature: Optional[float] = None, distributed: Optional[bool] = None):
        super().__init__()
        if frozen not in ("image", "text"):
            raise UsageError(f"cwcl frozen must be 'image' or 'text', got {frozen!r}")
        if weights not in WEIGHTS:
            raise UsageError(f"cwcl `weights` must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        self.frozen, self.weights, self.reverse = frozen, weights, reverse
        self.temperature, self.distributed = temperature, distributed

    @property
    def needs_teacher_embeddings(self) -> bool:
        return self.weights == "teacher"

    def _teacher_weights(self, batch: Optional[dict], device) -> torch.Tensor:
        key = f"teacher_{self.frozen}_embeds"
        if not batch or key not in batch:
            raise UsageError(f"cwcl with weights='teacher' needs batch[{key!r}] (a reinforcement store)")
        t = batch[key]
        t = (t[0] if isinstance(t, (list, tuple)) else (t[0] if t.dim() == 3 else t)).to(device).float()
        t_all = all_gather_with_grad(t)[0] if (is_distributed() if self.distributed is None
                                               else self.distributed) else t
        return intra_modal_weights(t, t_all)

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        img, txt = output.image_embeds, output.text_embeds
        img_all, txt_all, _, denom = gather_pairs(img, txt, self.distributed)
        p, q, p_all, q_all = (img, txt, img_all, txt_all) if self.frozen == "image" else (txt, img, txt_all, img_all)
        scale = output.logit_scale if self.temperature is None else 1.0 / self.temperature
        w = self._teacher_weights(batch, p.device).to(p.dtype) if self.weights == "teacher" else None
        fwd, bwd = cwcl_terms(p, q, p_all, q_all, scale, denom, w)
        total = (fwd + bwd) / 2 if self.reverse else fwd
        parts = {"cwcl": total.detach(), "frozen_to_trained": fwd.detach()}
        if self.reverse:
            parts["trained_to_frozen"] = bwd.detach()
        return LossOutput(total, parts)
