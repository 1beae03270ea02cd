"""CoCa's objective (Yu et al. 2022; open_clip's `CoCaLoss`): the CLIP loss plus a captioning loss.

    L = clip_weight · L_CLIP + caption_weight · L_cap,    L_cap = −(1/|P|) Σ_{(b,t) ∈ P} log p(y_{b,t} | y_{b,<t}, image_b)

over the caption positions P that are not padding (the model labels padding −100: `output.caption_labels`),
teacher-forced (`output.caption_logits`, from `CoCaModel.forward`). Defaults are open_clip's training defaults
(`coca_contrastive_loss_weight` 1, `coca_caption_loss_weight` 2).

Distributed: L_cap is the mean over every rank's labelled tokens: each rank divides its token sum by the
global token count and multiplies by the world size, so DDP's gradient averaging gives exactly the gradient of
one process holding the whole batch (open_clip averages per-rank means instead, which weights ranks with few
tokens more).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipforge.errors import UsageError
from clipforge.losses.clip import CLIPLoss
from clipforge.losses.distributed import is_distributed, rank_and_world
from clipforge.losses.registry import LossOutput, register_loss
from clipforge.models.coca import IGNORE_LABEL as IGNORE

__all__ = ["CoCaLoss", "caption_loss"]


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, *, distributed: bool = False) -> torch.Tensor:
    """Mean token cross-entropy of logits (B, T, V) against labels (B, T), −100 ignored (see the module
    docstring for the distributed normalisation); 0 when no position is labelled anywhere."""
    total = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum")
    count = (labels != IGNORE).sum().to(total.dtype)
    world = 1
    if distributed:
        count = count.detach().clone()
        dist.all_reduce(count)
        world = rank_and_world()[1]
    return total * world / count.clamp_min(1.0)


@register_loss("coca")
class CoCaLoss(CLIPLoss):
    """clip_weight × CLIP + caption_weight × caption cross-entropy. Needs a captioning model (CoCa).

    caption_weight: weight of the caption loss (open_clip default 2). clip_weight: of the contrastive loss (1;
    0 trains the decoder alone). chunk_size, distributed, dot_precision: as the clip loss.
    """

    needs_caption_logits = True
    part_name = "clip"

    def __init__(self, caption_weight: float = 2.0, clip_weight: float = 1.0, chunk_size: Optional[int] = None,
                 distributed: Optional[bool] = None, dot_precision: str = "auto"):
        super().__init__(chunk_size=chunk_size, distributed=distributed, dot_precision=dot_precision)
        self.caption_weight, self.clip_weight = float(caption_weight), float(clip_weight)
        if self.caption_weight < 0 or self.clip_weight < 0 or not (self.caption_weight or self.clip_weight):
            raise UsageError(f"`caption_weight` and `clip_weight` must be >= 0 and not both 0, got "
                             f"{caption_weight} and {clip_weight}")

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        if output.caption_logits is None:
            raise UsageError("loss 'coca' needs caption logits: train a captioning model (a CoCa config such as "
                             "coca-tiny), with images and their captions in one batch")
        parts = {}
        total = output.caption_logits.new_zeros(())
        if self.clip_weight:
            i2t, t2i = self.terms(output)
            clip = (i2t + t2i) / 2
            total = total + self.clip_weight * clip
            parts.update({"clip": clip.detach(), "image_to_text": i2t.detach(), "text_to_image": t2i.detach()})
        distributed = is_distributed() if self.distributed is None else self.distributed
        cap = caption_loss(output.caption_logits, output.caption_labels, distributed=distributed)
        parts["caption"] = cap.detach()
        return LossOutput(total + self.caption_weight * cap, parts)
