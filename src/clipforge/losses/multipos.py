"""DreamLIP's multi-positive objective: every caption of an image is a positive for it.

Long captions are split into sentences and K of them are sampled per image (the loader's sub-captions,
`needs_caption_lists`). On top of the CLIP loss on the main caption, each image is pulled towards all of its
captions (the main one and its sub-captions) and pushed from every other caption in the (gathered) batch
with a circle loss on raw cosine similarities — as DreamLIP's released code (`pairwise_circleloss`, γ = 32,
margin m = 0.25, the term divided by 10):

    α_p = [1 + m − s_p]₊,  α_n = [s_n + m]₊      (treated as constants)
    L_i = softplus( lse_{p ∈ P(i)} −γ α_p (s_p − (1 − m))  +  lse_{n ∉ P(i)} γ α_n (s_n − m) )
    L   = w_c·L_CLIP + w_mp·mean_i L_i           (w_mp = 0.1, i.e. DreamLIP's /10)

Confirmed against github.com/zyf0619sjtu/DreamLIP `open_clip/loss.py`: γ and m defaults, the circle form,
its /10 weight, and that the positives are all captions of the image including the raw one. Not copied:
DreamLIP also divides its CLIP term by the number of texts per image (`clip_weight` can do the same) and
offers a sub-caption↔patch grouping loss (not implemented). Memory: one (B, N_texts) similarity matrix
per rank (no chunked variant).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from clipforge.errors import UsageError
from clipforge.losses.clip import CLIPLoss
from clipforge.losses.distributed import all_gather_with_grad, gather_sizes, is_distributed, rank_and_world
from clipforge.losses.registry import LossOutput, register_loss


def circle_multipositive(img: torch.Tensor, txt: torch.Tensor, positive: torch.Tensor, *, gamma: float = 32.0,
                         margin: float = 0.25) -> torch.Tensor:
    """Per-image circle loss (B,). img (B, D), txt (M, D) normalised; positive (B, M) bool, ≥ 1 per row."""
    s = img @ txt.t()                                                   # (B, M) cosine similarities
    alpha_p = (1 + margin - s.detach()).clamp(min=0)
    alpha_n = (s.detach() + margin).clamp(min=0)
    neg_inf = torch.finfo(s.dtype).min
    logit_p = (-gamma * alpha_p * (s - (1 - margin))).masked_fill(~positive, neg_inf)
    logit_n = (gamma * alpha_n * (s - margin)).masked_fill(positive, neg_inf)
    return F.softplus(torch.logsumexp(logit_p, 1) + torch.logsumexp(logit_n, 1))


@register_loss("clip+multipos")
class MultiPositiveCLIPLoss(CLIPLoss):
    """CLIP on the main caption + DreamLIP's circle loss over all of an image's captions.
    sub_captions: sentences sampled per image (K). gamma, margin: circle loss. weight: its weight (0.1)."""

    needs_caption_lists = True
    part_name = "clip"

    def __init__(self, sub_captions: int = 3, gamma: float = 32.0, margin: float = 0.25, weight: float = 0.1,
                 clip_weight: float = 1.0, chunk_size: Optional[int] = None, distributed: Optional[bool] = None,
                 dot_precision: str = "auto"):
        super().__init__(chunk_size=chunk_size, distributed=distributed, dot_precision=dot_precision)
        if int(sub_captions) < 1:
            raise UsageError(f"`sub_captions` must be >= 1, got {sub_captions}")
        self.sub_captions = int(sub_captions)    # the loader samples this many per image
        self.gamma, self.margin, self.weight, self.clip_weight = float(gamma), float(margin), float(weight), \
            float(clip_weight)

    @property
    def caption_list_size(self) -> int:
        return self.sub_captions

    def forward(self, output, batch: Optional[dict] = None) -> LossOutput:
        i2t, t2i = self.terms(output)
        clip = (i2t + t2i) / 2
        img, txt = output.image_embeds, output.text_embeds
        b = img.shape[0]
        subs = None if batch is None else batch.get("sub_caption_text_embeds")
        owner = torch.arange(b, device=img.device)                      # caption -> its image (local rows)
        if subs is not None and subs.shape[0]:
            txt = torch.cat([txt, subs])
            owner = torch.cat([owner, batch["sub_caption_index"].to(img.device)])
        if is_distributed() if self.distributed is None else self.distributed:
            rank, world = rank_and_world()
            sizes = gather_sizes(b, img.device, None)                   # images per rank
            first = sum(sizes[:rank])                                    # this rank's first global image row
            txt_all, _ = all_gather_with_grad(txt)
            owner_all, _ = all_gather_with_grad(owner + first)          # owners as global image rows
            denom = sum(sizes) / world
        else:
            txt_all, owner_all, denom, first = txt, owner, float(b), 0
        positive = owner_all[None, :] == (first + torch.arange(b, device=img.device))[:, None]   # (B, M)
        mp = circle_multipositive(img, txt_all, positive, gamma=self.gamma, margin=self.margin).sum() / denom
        total = self.clip_weight * clip + self.weight * mp
        return LossOutput(total, {"clip": clip.detach(), "multipos": mp.detach(), "clip+multipos": total.detach()})
