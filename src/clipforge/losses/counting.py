"""Counting hard negatives ("Teaching CLIP to Count").

For a caption with a number from two to ten (word or digits) the data pipeline makes a counterfactual
caption with a different number (`clipforge.data.counterfactual`). For those counting samples

    L_count = −log[ e^{s(i,t)} / (e^{s(i,t)} + e^{s(i,t_cf)}) ] = softplus(s(i,t_cf) − s(i,t))

with s(·,·) the scaled similarity, and the total is L_CLIP + λ·L_count (λ = `weight` = 1), the counting term averaged
over the counting samples only: it is zero exactly for batches without a number in any caption. The
counterfactual number is drawn from 2..`max_count` (10, the paper's range): set it to the largest count in
the training captions, or numbers that never occur in a true caption become a text-only shortcut. The loss
declares `needs_counterfactual_captions`; the trainer has the loader make them and encodes them with the
same text tower in the same forward, and passes, in `batch`:
    "counterfactual_text_embeds": (C, D) normalised embeddings of the counterfactual captions
    "count_index": (C,) long, row of the batch each counterfactual belongs to
Under DDP the counting term is the mean over each rank's own counting samples (no gather needed: each
term involves one image and its two captions only).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from clipforge.errors import UsageError
from clipforge.losses.clip import CLIPLoss
from clipforge.losses.registry import LossOutput, register_loss


def counting_loss(img: torch.Tensor, txt: torch.Tensor, cf_txt: torch.Tensor, logit_scale) -> torch.Tensor:
    """Mean over counting samples. img, txt: (C, D) the counting samples' pairs; cf_txt: (C, D)."""
    pos = logit_scale * (img * txt).sum(-1)         # (C,)
    neg = logit_scale * (img * cf_txt).sum(-1)      # (C,)
    return F.softplus(neg - pos).mean()


@register_loss("clip+count")
class CountingCLIPLoss(CLIPLoss):
    """CLIP loss (chunked/distributed as `clip`) plus λ·L_count on the samples that have a counterfactual."""

    needs_counterfactual_captions = True
    part_name = "clip"

    def __init__(self, weight: float = 1.0, max_count: int = 10, chunk_size: Optional[int] = None,
                 distributed: Optional[bool] = None, dot_precision: str = "auto"):
        super().__init__(chunk_size=chunk_size, distributed=distributed, dot_precision=dot_precision)
        if not 3 <= int(max_count) <= 10:
            raise UsageError(f"loss option max_count must be in [3, 10] (the largest count in the training "
                             f"captions), got {max_count}")
        self.weight = float(weight)
        self.max_count = int(max_count)  # the loader draws counterfactual numbers from 2..max_count

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        base = super().forward(output, batch)
        cf = None if batch is None else batch.get("counterfactual_text_embeds")
        if cf is None or cf.shape[0] == 0:
            count = base.total.new_zeros(())
        else:
            if "count_index" not in batch:
                raise UsageError("batch has counterfactual_text_embeds but no count_index")
            idx = batch["count_index"]
            count = counting_loss(output.image_embeds[idx], output.text_embeds[idx], cf, output.logit_scale)
        total = base.total + self.weight * count
        return LossOutput(total, {**base.parts, "count": count.detach(), "clip+count": total.detach()})
