"""MobileCLIP-style reinforced distillation: CLIP loss plus KD towards stored teacher similarities.

    L    = w_c·L_CLIP + w_d·L_KD
    L_KD = ½ [ CE(p_T^{i→t}, log softmax S^{i→t}) + CE(p_T^{t→i}, log softmax S^{t→i}) ]

S = s·img·txtᵀ is the student's logit matrix; p_T the teacher's row softmax at scale 100 over the stored
teacher embeddings, averaged over an ensemble of teachers *after* the softmax. The loss declares
`needs_teacher_embeddings`: the embeddings come from a reinforcement store (`clipforge data reinforce`), for
the very augmentation and caption the loader replays, so no teacher runs during training. In `batch`:
"teacher_image_embeds" and "teacher_text_embeds", each (B, D_t), (E, B, D_t), or a list of E (B, D_e)
tensors when the teachers' widths differ (normalised). The weights w_c, w_d are options (defaults 1, 1).
Distributed: teacher and student features gathered, local rows against all columns, as in `clip`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from clipforge.errors import UsageError
from clipforge.losses.clip import contrastive_terms, gather_pairs
from clipforge.losses.registry import LossOutput, register_loss


def teacher_probs(t_rows, t_cols, scale: float = 100.0) -> torch.Tensor:
    """(E, B, Dt) rows, (E, N, Dt) columns (or lists of E (B, D_e) / (N, D_e)) -> (B, N) softmax over columns,
    averaged over the E teachers."""
    def wide(t):  # stored teachers may be float16: their softmax at scale 100 runs in at least float32
        return t.to(torch.promote_types(t.dtype, torch.float32))

    return torch.stack([torch.softmax(scale * wide(r) @ wide(c).t(), dim=-1)
                        for r, c in zip(t_rows, t_cols)]).mean(0)


def _teachers(x) -> list:
    """(B, D), (E, B, D) or a list of (B, D_e) -> list of E (B, D_e) tensors, detached."""
    if isinstance(x, (list, tuple)):
        return [t.detach() for t in x]
    return [t.detach() for t in (x[None] if x.dim() == 2 else x)]


def kd_rows(student_rows: torch.Tensor, student_cols: torch.Tensor, probs: torch.Tensor, scale) -> torch.Tensor:
    """Σ over rows of CE(p_T, log softmax(s·rows·colsᵀ)). (B, D), (N, D), probs (B, N)."""
    logq = torch.log_softmax(scale * student_rows @ student_cols.t(), dim=1)
    return -(probs * logq).sum()


def distill_loss(img, txt, t_img, t_txt, logit_scale, *, teacher_scale: float = 100.0) -> torch.Tensor:
    """L_KD of one batch; t_img, t_txt: (B, Dt), (E, B, Dt) or lists of E (B, D_e) teacher embeddings."""
    t_img, t_txt = _teachers(t_img), _teachers(t_txt)
    i2t = kd_rows(img, txt, teacher_probs(t_img, t_txt, teacher_scale), logit_scale)
    t2i = kd_rows(txt, img, teacher_probs(t_txt, t_img, teacher_scale), logit_scale)
    return (i2t + t2i) / (2 * img.shape[0])


@register_loss("clip+distill")
class DistillCLIPLoss(nn.Module):
    """w_c·CLIP + w_d·KD towards stored teacher similarities (MobileCLIP's reinforced training)."""

    needs_teacher_embeddings = True

    def __init__(self, clip_weight: float = 1.0, distill_weight: float = 1.0, teacher_scale: float = 100.0,
                 chunk_size: Optional[int] = None, distributed: Optional[bool] = None,
                 dot_precision: str = "auto"):
        super().__init__()
        self.clip_weight, self.distill_weight = float(clip_weight), float(distill_weight)
        self.teacher_scale, self.chunk_size, self.distributed = float(teacher_scale), chunk_size, distributed
        self.dot_precision = dot_precision

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        if batch is None or "teacher_image_embeds" not in batch or "teacher_text_embeds" not in batch:
            raise UsageError("clip+distill needs batch['teacher_image_embeds'] and batch['teacher_text_embeds']")
        img, txt, scale = output.image_embeds, output.text_embeds, output.logit_scale
        img_all, txt_all, offset, denom = gather_pairs(img, txt, self.distributed)
        i2t, t2i = contrastive_terms(img, txt, img_all, txt_all, offset, scale, chunk_size=self.chunk_size,
                                     denom=denom, dot_precision=self.dot_precision)
        clip = (i2t + t2i) / 2
        t_img, t_txt = _teachers(batch["teacher_image_embeds"]), _teachers(batch["teacher_text_embeds"])
        if len(t_img) != len(t_txt):
            raise UsageError(f"{len(t_img)} teachers' image embeddings but {len(t_txt)} teachers' text embeddings")
        t_img = [t.to(img.device) for t in t_img]
        t_txt = [t.to(img.device) for t in t_txt]
        gathered = [gather_pairs(a, b, self.distributed)[:2] for a, b in zip(t_img, t_txt)]   # (N, D_e) each
        t_img_all, t_txt_all = [g[0] for g in gathered], [g[1] for g in gathered]
        kd_i2t = kd_rows(img, txt_all, teacher_probs(t_img, t_txt_all, self.teacher_scale), scale)
        kd_t2i = kd_rows(txt, img_all, teacher_probs(t_txt, t_img_all, self.teacher_scale), scale)
        kd = (kd_i2t + kd_t2i) / (2 * denom)
        total = self.clip_weight * clip + self.distill_weight * kd
        return LossOutput(total, {"clip": clip.detach(), "distill": kd.detach(), "clip+distill": total.detach()})
