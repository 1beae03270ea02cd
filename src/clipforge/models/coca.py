"""CoCaModel: a contrastive captioner (open_clip's `CoCa`) — the CLIP contract plus a caption decoder.

    out = model(pixels, ids)          # CLIPOutput with caption_logits (B, T-1, vocab) and caption_labels
    model.encode_image / encode_text  # as every CLIPModel: the contrastive embeddings
    model.image_tokens(pixels)        # (B, M, D) what the decoder reads
    model.next_token_logits(img_tokens, ids)   # (B, vocab) logits of the token after ids (generation)

`forward` decodes the first B captions against the B images (the trainer concatenates any extra text streams
after them), teacher-forced: the decoder reads the text tower's features at positions 0..T-2 and predicts
tokens 1..T-1; padding labels are -100 so the caption loss ignores them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import UsageError
from clipforge.models.clip import CLIPModel
from clipforge.models.coca_config import CoCaConfig
from clipforge.models.coca_decoder import CaptionDecoder
from clipforge.models.coca_towers import CoCaTextTower, CoCaVisionTower
from clipforge.models.output import CLIPOutput
from clipforge.models.transforms import image_transform

__all__ = ["CoCaModel", "IGNORE_LABEL"]

IGNORE_LABEL = -100  # caption label of a padding position (F.cross_entropy's default ignore_index)


def _init_blocks(blocks, width: int, layers: int) -> None:
    """OpenAI-style scaled init, as CLIPModel's and open_clip's: output projections shrink with depth."""
    proj_std, attn_std, fc_std = (width ** -0.5) * ((2 * max(layers, 1)) ** -0.5), width ** -0.5, (2 * width) ** -0.5
    for blk in blocks:
        nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
        nn.init.normal_(blk.attn.out.weight, std=proj_std)
        nn.init.normal_(blk.mlp.fc.weight, std=fc_std)
        nn.init.normal_(blk.mlp.proj.weight, std=proj_std)


class CoCaModel(CLIPModel):
    """Image tower with an attentional pooler, unimodal text tower, multimodal caption decoder."""

    def __init__(self, config: CoCaConfig, tokenizer=None, pretrained: bool = False):
        """`pretrained` is accepted for the factory's sake: CoCa towers have no separately pretrained weights."""
        nn.Module.__init__(self)  # CLIPModel.__init__ builds CLIP towers; these are CoCa's
        self.config, D = config, config.embed_dim
        self.visual = CoCaVisionTower(config.vision, D, config.pooler_queries, config.pooler_heads)
        self.text = CoCaTextTower(config.text, D, config.cls_mask)
        self.decoder = CaptionDecoder(config.decoder, config.text.vocab_size)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(config.logit_bias_init)))
                           if config.logit_bias_init is not None else None)
        self._init_weights()
        self.tokenizer, self.preprocess = tokenizer, image_transform(config, train=False)
        self.preprocess_train = image_transform(config, train=True)

    def _init_weights(self) -> None:
        super()._init_weights()  # the image trunk and its projection
        t, d = self.config.text, self.config.decoder
        _init_blocks(self.text.blocks, t.width, t.layers)
        _init_blocks(list(self.decoder.blocks) + list(self.decoder.cross), d.width, d.layers)
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text.proj.weight, std=t.width ** -0.5)
        nn.init.normal_(self.decoder.proj.weight, std=d.width ** -0.5)

    @property
    def can_caption(self) -> bool:
        return True

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, pooler_queries - 1, D) image tokens the decoder cross-attends to (not normalised)."""
        return self.visual(pixels.to(self.dtype)).tokens

    def caption_logits(self, image_tokens: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, T, vocab) next-token logits at every position of token_ids (B, T), given the image tokens."""
        return self.decoder(image_tokens, self.text(token_ids, return_tokens=True).tokens)

    def next_token_logits(self, image_tokens: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, vocab) logits of the token that follows each row of token_ids (B, T)."""
        return self.caption_logits(image_tokens, token_ids)[:, -1]

    def forward(self, pixels: Optional[torch.Tensor] = None, token_ids: Optional[torch.Tensor] = None, *,
                normalize: bool = True, return_tokens: bool = False,
                image_features: Optional[torch.Tensor] = None,
                text_features: Optional[torch.Tensor] = None) -> CLIPOutput:
        if image_features is not None or text_features is not None:
            raise UsageError("a CoCa model decodes captions from its image tokens: it has no cached-feature path "
                             "(`image_features` / `text_features`)")

        def norm(x):
            return F.normalize(x, dim=-1) if normalize and x is not None else x

        img = txt = img_tok = txt_tok = mask = logits = labels = None
        v = self.visual(pixels.to(self.dtype)) if pixels is not None else None
        t = self.text(token_ids, return_tokens=True) if token_ids is not None else None
        if v is not None:
            img = norm(v.pooled)
            img_tok = norm(v.tokens) if return_tokens else None
        if t is not None:
            txt = norm(t.pooled)
            if return_tokens:
                txt_tok, mask = norm(self.text.proj(self.text.ln_final(t.tokens))), t.mask
        if v is not None and t is not None and token_ids.shape[0] >= pixels.shape[0] and token_ids.shape[1] > 1:
            n = pixels.shape[0]
            logits = self.decoder(v.tokens, t.tokens[:n, :-1])                      # (n, T-1, vocab)
            labels = token_ids[:n, 1:].masked_fill(~t.mask[:n, 1:], IGNORE_LABEL)   # (n, T-1)
        return CLIPOutput(image_embeds=img, text_embeds=txt, logit_scale=self.logit_scale.exp(),
                          logit_bias=self.logit_bias, image_tokens=img_tok, text_tokens=txt_tok, text_mask=mask,
                          caption_logits=logits, caption_labels=labels)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)

