"""CoCa's two encoders (open_clip's `CoCa`): an image tower that pools with learned queries and returns tokens
for the caption decoder, and a unimodal text tower that pools an appended class token.

Image: the ViT trunk of `vision.VisionTower` (patch conv, class token, positions, ln_pre, blocks), then
open_clip's original CoCa head — an attentional pooler of `pooler_queries` queries over every token (class token
included), ln_post on its (n_queries, D) output, query 0 projected (D x D) as the pooled feature, queries 1..
as the image tokens (B, n_queries - 1, D).

Text: token embeddings + a learned class embedding appended at the end, causal self-attention that also hides
padding, ln_final on the class token alone, projected; the tokens the decoder reads are the blocks' raw outputs
at the text positions (no ln_final), as open_clip. `cls_mask` "legacy" is the padding mask open_clip's released
CoCa weights were trained with (its key mask is shifted one position: key j is hidden when token j-1 is
padding); "correct" hides key j when token j is.
"""
from __future__ import annotations

import torch
from torch import nn

from clipforge.models.coca_layers import AttentionalPooler, MaskedBlock, run_blocks
from clipforge.models.output import TowerOutput
from clipforge.models.vision import VisionTower

__all__ = ["CoCaVisionTower", "CoCaTextTower", "CLS_MASKS"]

CLS_MASKS = ("legacy", "correct")


class CoCaVisionTower(VisionTower):
    def __init__(self, cfg, embed_dim: int, pooler_queries: int, pooler_heads: int):
        super().__init__(cfg, embed_dim)
        self.attn_pool = AttentionalPooler(embed_dim, cfg.width, pooler_heads, pooler_queries, cfg.ln_eps)
        self.ln_post = nn.LayerNorm(embed_dim, eps=cfg.ln_eps)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, pixels: torch.Tensor, return_tokens: bool = True) -> TowerOutput:
        """pooled (B, D) and the decoder's image tokens (B, pooler_queries - 1, D), always."""
        x = self.conv(pixels).flatten(2).transpose(1, 2)  # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        x = self.ln_post(self.attn_pool(self.transformer(x)))  # (B, n_queries, D)
        return TowerOutput(self.proj(x[:, 0]), x[:, 1:])


class CoCaTextTower(nn.Module):
    def __init__(self, cfg, embed_dim: int, cls_mask: str = "legacy"):
        super().__init__()
        if cls_mask not in CLS_MASKS:
            raise ValueError(f"unknown cls_mask {cls_mask!r}; valid: {', '.join(CLS_MASKS)}")
        self.cfg, self.cls_mask = cfg, cls_mask
        W = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, W)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length + 1, W) * 0.01)
        self.cls_emb = nn.Parameter(torch.randn(W) * 0.01)
        self.blocks = nn.ModuleList(MaskedBlock(W, cfg.heads, cfg.mlp_ratio, cfg.act, True, cfg.ln_eps)
                                    for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(W, eps=cfg.ln_eps)
        self.proj = nn.Linear(W, embed_dim, bias=False)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, 1, T+1, T+1) bool: causal, and padding keys hidden per `cls_mask` (the class key never is)."""
        B, T = ids.shape
        valid = ids != self.cfg.pad_token_id
        ones = valid.new_ones(B, 1)
        valid = torch.cat([ones, valid] if self.cls_mask == "legacy" else [valid, ones], dim=1)  # (B, T+1)
        causal = torch.ones(T + 1, T + 1, dtype=torch.bool, device=ids.device).tril()
        return (causal[None] & valid[:, None, :]).unsqueeze(1)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T+1, W): the blocks' output at the T text positions and the appended class position."""
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"token sequence of length {ids.shape[1]} exceeds context_length "
                             f"{self.cfg.context_length}")
        x = self.token_embedding(ids)
        x = torch.cat([x, self.cls_emb.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        return run_blocks(self.blocks, x, self.mask(ids), grad_checkpointing=self.grad_checkpointing)

    def forward(self, ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        """pooled (B, D); with `return_tokens`, the raw text-position features (B, T, W) the decoder reads and
        the padding mask (B, T)."""
        x = self.features(ids)
        pooled = self.proj(self.ln_final(x[:, -1]))
        if return_tokens:
            return TowerOutput(pooled, x[:, :-1], ids != self.cfg.pad_token_id)
        return TowerOutput(pooled)
