"""CoCa's multimodal text decoder (open_clip's `MultimodalTransformer`): per layer a causal self-attention block
over the text features, then a cross-attention block reading the image tokens; ln_final and a projection to the
vocabulary give next-token logits.

    logits = decoder(image_tokens (B, M, D), text_features (B, T, W))   # (B, T, vocab); D == W
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.models.coca_layers import CrossBlock
from clipforge.models.layers import Block

__all__ = ["CaptionDecoder"]


class CaptionDecoder(nn.Module):
    def __init__(self, cfg, vocab_size: int):
        """`cfg`: a `DecoderConfig` (width, layers, heads, mlp_ratio, act, ln_eps)."""
        super().__init__()
        W = cfg.width
        self.blocks = nn.ModuleList(Block(W, cfg.heads, cfg.mlp_ratio, cfg.act, True, cfg.ln_eps)
                                    for _ in range(cfg.layers))
        self.cross = nn.ModuleList(CrossBlock(W, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
                                   for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(W, eps=cfg.ln_eps)
        self.proj = nn.Linear(W, vocab_size, bias=False)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, image_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = text
        for blk, cross in zip(self.blocks, self.cross):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, True, use_reentrant=False)
                x = checkpoint(cross, x, image_tokens, use_reentrant=False)
            else:
                x = cross(blk(x, causal=True), image_tokens)
        return self.proj(self.ln_final(x))  # (B, T, vocab)
