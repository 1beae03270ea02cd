"""Text transformer tower: token + position embedding, causal (CLIP) or bidirectional (SigLIP), pooling."""
from __future__ import annotations

import torch
from torch import nn

from clipforge.models.layers import Transformer
from clipforge.models.output import TowerOutput


def original_position_ids(length: int, keep: int, factor: int, table: int) -> torch.Tensor:
    """(length,) the row, in a table stretched by `models.stretch`, that holds each old position p: p itself
    for the `keep` kept ones, then keep + factor·(p − keep) (the interpolation copies them exactly there)."""
    p = torch.arange(length)
    return torch.where(p < keep, p, keep + factor * (p - keep)).clamp(max=table - 1)


class TextTower(nn.Module):
    def __init__(self, cfg, embed_dim: int):
        """`cfg`: a `TextConfig` (validated when constructed: pools, eos id, stretching, widths)."""
        super().__init__()
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

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Position embeddings for ids (B, T): (T, W), or (B, T, W) when a stretched tower keeps texts that fit
        the old context on their original positions."""
        T, c = ids.shape[1], self.cfg
        if c.stretched_from is None or c.short_positions == "stretched":
            return self.positional_embedding[:T]
        short = self.pool_index(ids) < c.stretched_from                         # (B,) fits the old context
        old = original_position_ids(T, c.stretch_keep, c.stretch_factor, c.context_length).to(ids.device)
        rows = torch.where(short[:, None], old[None], torch.arange(T, device=ids.device)[None])   # (B, T)
        return self.positional_embedding[rows]

    def trim(self, ids: torch.Tensor) -> torch.Tensor:
        """`ids` without the padding columns after every row's pooled token, where that is exact.

        Causal attention: positions after the pooled end token cannot change it, so the padding columns every
        row has can go. Exact, and prompts of ~10 tokens in a 77-token context cost ~7x less. Engines that run
        an exported graph (dynamic sequence length) call this before `embed`.
        """
        if self.cfg.causal and self.cfg.pool in ("argmax", "eos") and ids.shape[1]:
            return ids[:, : int(self.pool_index(ids).max()) + 1]
        return ids

    def forward(self, ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"token sequence of length {ids.shape[1]} exceeds context_length "
                             f"{self.cfg.context_length}")
        return self.embed(ids if return_tokens else self.trim(ids), return_tokens)

    def embed(self, ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        """The tower on `ids` as given (no trimming; what an exported graph holds)."""
        return self.forward_embeddings(self.token_embedding(ids), ids, return_tokens, trim=False)

    def forward_embeddings(self, x: torch.Tensor, ids: torch.Tensor, return_tokens: bool = False,
                           trim: bool = True) -> TowerOutput:
        """The tower from token embeddings x (B, T, W) on; `ids` (B, T) still decide pooling, padding and
        positions. Prompt learning (CoOp) calls this with some embeddings replaced by learned vectors. `trim`:
        drop the padding columns after every row's pooled token where that is exact (see `trim`)."""
        if trim and not return_tokens:
            n = self.trim(ids).shape[1]
            ids, x = ids[:, :n], x[:, :n]
        B, T = ids.shape
        x = x + self._positions(ids).to(x.dtype)
        if self.cfg.pool != "mean" and not return_tokens:  # only the pooled token's last-block row is needed
            pooled = self.ln_final(self.transformer(x, causal=self.cfg.causal, keep=self.pool_index(ids)))[:, 0]
            return TowerOutput(self.proj(pooled))
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
