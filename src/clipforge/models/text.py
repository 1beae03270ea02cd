"""Text transformer tower: token + position embedding, causal (CLIP) or bidirectional (SigLIP), pooling."""
from __future__ import annotations

import torch
from torch import nn

from clipforge.models.config import TextConfig
from clipforge.models.layers import Transformer
from clipforge.models.output import TowerOutput

POOLS = ("argmax", "eos", "last", "first", "mean")


class TextTower(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        if cfg.pool not in POOLS:
            raise ValueError(f"unknown text pool {cfg.pool!r}; valid: {', '.join(POOLS)}")
        if cfg.pool == "eos" and cfg.eos_token_id is None:
            raise ValueError("text pool 'eos' needs eos_token_id in the text config")
        if not cfg.proj and cfg.width != embed_dim:
            raise ValueError(f"text proj=False needs width ({cfg.width}) == embed_dim ({embed_dim})")
        self.cfg = cfg
        W = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, W)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, W) * 0.01)
        self.transformer = Transformer(W, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, True, cfg.ln_eps)
        self.ln_final = nn.LayerNorm(W, eps=cfg.ln_eps)
        self.proj = nn.Linear(W, embed_dim, bias=cfg.proj_bias) if cfg.proj else nn.Identity()
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) position of the pooled token for each sequence."""
        p = self.cfg.pool
        if p == "argmax":  # OpenAI: the end token has the highest id; argmax returns its first occurrence
            return ids.argmax(dim=-1)
        if p == "eos":
            return (ids == self.cfg.eos_token_id).int().argmax(dim=-1)
        if p == "last":
            return torch.full(ids.shape[:1], ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        return torch.zeros(ids.shape[:1], dtype=torch.long, device=ids.device)

    def forward(self, ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"token sequence of length {ids.shape[1]} exceeds context_length "
                             f"{self.cfg.context_length}")
        return self.forward_embeddings(self.token_embedding(ids), ids, return_tokens)

    def forward_embeddings(self, x: torch.Tensor, ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        """The tower from token embeddings x (B, T, W) on; `ids` (B, T) still decide pooling and padding.
        Prompt learning (CoOp) calls this with some embeddings replaced by learned vectors."""
        if self.cfg.causal and self.cfg.pool in ("argmax", "eos") and not return_tokens:
            # Causal attention: positions after the pooled end token cannot change it, so drop the padding
            # columns every row has. Exact, and prompts of ~10 tokens in a 77-token context cost ~7x less.
            n = int(self.pool_index(ids).max()) + 1
            ids, x = ids[:, :n], x[:, :n]
        B, T = ids.shape
        x = x + self.positional_embedding[:T].to(x.dtype)
        x = self.ln_final(self.transformer(x, causal=self.cfg.causal))  # (B, T, W)
        mask = ids != self.cfg.pad_token_id  # (B, T) real tokens
        if self.cfg.pool == "mean":
            m = mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            pooled = x[torch.arange(B, device=ids.device), self.pool_index(ids)]
        pooled = self.proj(pooled)  # (B, D)
        if return_tokens:
            return TowerOutput(pooled, self.proj(x), mask)
        return TowerOutput(pooled)
