"""MobileCLIP-style reinforced distillation: CLIP loss plus KD towards stored teacher similarities.

    L    = w_c·L_CLIP + w_d·L_KD
    L_KD = ½ [ CE(p_T^{i→t}, log softmax S^{i→t}) + CE(p_T^{t→i}, log softmax S^{t→i}) ]

S = s·img·txtᵀ is the student's logit matrix; p_T the teacher's row softmax at scale 100 over the stored
teacher embeddings, averaged over an ensemble of teachers *after* the softmax. The dataset supplies, in
`batch`, "teacher_image_embeds" and "teacher_text_embeds": (B, D_t) or (E, B, D_t) for E teachers
(normalised). The weights w_c, w_d are options (defaults 1, 1). Distributed: teacher and student features
gathered, local rows against all columns, as in `clip`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from clipforge.errors import UsageError
from clipforge.losses.clip import contrastive_terms, gather_pairs
from clipforge.losses.registry import LossOutput, register_loss


def teacher_probs(t_rows: torch.Tensor, t_cols: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """(E, B, Dt) rows, (E, N, Dt) columns -> (B, N) softmax over columns, averaged over the E teachers."""
    return torch.softmax(scale * t_rows @ t_cols.transpose(1, 2), dim=-1).mean(0)


def kd_rows(student_rows: torch.Tensor, student_cols: torch.Tensor, probs: torch.Tensor, scale) -> torch.Tensor:
    """Σ over rows of CE(p_T, log softmax(s·rows·colsᵀ)). (B, D), (N, D), probs (B, N)."""
    logq = torch.log_softmax(scale * student_rows @ student_cols.t(), dim=1)
    return -(probs * logq).sum()


def distill_loss(img, txt, t_img, t_txt, logit_scale, *, teacher_scale: float = 100.0) -> torch.Tensor:
    """L_KD of one batch; t_img, t_txt: (B, Dt) or (E, B, Dt) teacher embeddings."""
    t_img = t_img if t_img.dim() == 3 else t_img[None]
    t_txt = t_txt if t_txt.dim() == 3 else t_txt[None]
    i2t = kd_rows(img, txt, teacher_probs(t_img, t_txt, teacher_scale), logit_scale)
    t2i = kd_rows(txt, img, teacher_probs(t_txt, t_img, teacher_scale), logit_scale)
    return (i2t + t2i) / (2 * img.shape[0])


@register_loss("clip+distill")
class DistillCLIPLoss(nn.Module):
    def __init__(self, clip_weight: float = 1.0, distill_weight: float = 1.0, teacher_scale: float = 100.0,
                 chunk_size: Optional[int] = None, distributed: Optional[bool] = None):
        super().__init__()
        self.clip_weight, self.distill_weight = float(clip_weight), float(distill_weight)
        self.teacher_scale, self.chunk_size, self.distributed = float(teacher_scale), chunk_size, distributed

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        if batch is None or "teacher_image_embeds" not in batch or "teacher_text_embeds" not in batch:
            raise UsageError("clip+distill needs batch['teacher_image_embeds'] and batch['teacher_text_embeds']")
        img, txt, scale = output.image_embeds, output.text_embeds, output.logit_scale
        img_all, txt_all, offset, denom = gather_pairs(img, txt, self.distributed)
        i2t, t2i = contrastive_terms(img, txt, img_all, txt_all, offset, scale, chunk_size=self.chunk_size,
                                     denom=denom)
        clip = (i2t + t2i) / 2
        # Teachers: (E, B, Dt); gather along the batch axis (dim 1) by moving it first.
        t_img, t_txt = (batch[k] if batch[k].dim() == 3 else batch[k][None]
                        for k in ("teacher_image_embeds", "teacher_text_embeds"))
        t_img_all, t_txt_all, _, _ = gather_pairs(t_img.transpose(0, 1).detach(), t_txt.transpose(0, 1).detach(),
                                                  self.distributed)
        t_img_all, t_txt_all = t_img_all.transpose(0, 1), t_txt_all.transpose(0, 1)   # (E, N, Dt)
        kd_i2t = kd_rows(img, txt_all, teacher_probs(t_img, t_txt_all, self.teacher_scale), scale)
        kd_t2i = kd_rows(txt, img_all, teacher_probs(t_txt, t_img_all, self.teacher_scale), scale)
        kd = (kd_i2t + kd_t2i) / (2 * denom)
        total = self.clip_weight * clip + self.distill_weight * kd
        return LossOutput(total, {"clip": clip.detach(), "distill": kd.detach(), "clip+distill": total.detach()})
