"""The typed outputs: `CLIPOutput` from every CLIP-style model, `TowerOutput` from each of its towers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class TowerOutput:
    """What each tower (`VisionTower`, `TextTower`) returns.

    pooled: (B, D) projected embedding (not normalised)
    tokens: (B, N, D) projected tokens (vision: patches without the class token; text: every position),
            only when asked for
    mask:   (B, T) bool, True on real (non-padding) text tokens; text tower with tokens only
    """

    pooled: torch.Tensor
    tokens: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None


@dataclass
class CLIPOutput:
    """What `CLIPModel.forward` returns (every backend, every config).

    image_embeds: (B, D) image embeddings (L2-normalised unless the caller asked otherwise)
    text_embeds:  (B, D) text embeddings
    logit_scale:  scalar tensor, already exponentiated (s = exp(t))
    logit_bias:   scalar tensor or None (SigLIP-style heads)
    image_tokens: (B, N, D) projected patch tokens (no class token), only when asked for
    text_tokens:  (B, T, D) projected text tokens, only when asked for
    text_mask:    (B, T) bool, True on real (non-padding) text tokens, only with text_tokens
    caption_logits: (B, T-1, vocab) next-token logits of a captioning model (CoCa) for each image's caption,
                  teacher-forced: row t predicts token t+1
    caption_labels: (B, T-1) long, the tokens they predict, -100 where the caption is padding (ignored)
    """

    image_embeds: Optional[torch.Tensor]
    text_embeds: Optional[torch.Tensor]
    logit_scale: torch.Tensor
    logit_bias: Optional[torch.Tensor] = None
    image_tokens: Optional[torch.Tensor] = None
    text_tokens: Optional[torch.Tensor] = None
    text_mask: Optional[torch.Tensor] = None
    caption_logits: Optional[torch.Tensor] = None
    caption_labels: Optional[torch.Tensor] = None

    def logits(self) -> torch.Tensor:
        """(B_img, B_txt) similarity logits: scale * img @ txt.T (+ bias)."""
        out = self.logit_scale * self.image_embeds @ self.text_embeds.t()
        if self.logit_bias is not None:
            out = out + self.logit_bias
        return out
