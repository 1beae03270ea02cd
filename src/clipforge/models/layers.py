"""Transformer building blocks shared by the vision and text towers."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


Keep = Union[int, torch.Tensor]  # the one row per sequence a pooled tower needs from its last block


def take_row(x: torch.Tensor, keep: Keep) -> torch.Tensor:
    """(B, N, ...) -> (B, 1, ...): row `keep` of every sequence (an int), or row keep[b] of sequence b."""
    if isinstance(keep, int):
        return x[:, keep:keep + 1]
    return x[torch.arange(x.shape[0], device=x.device), keep].unsqueeze(1)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {name!r}; valid: quick_gelu, gelu, gelu_tanh")


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (OpenAI's in_proj layout: q, k, v stacked)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False, keep: Optional[Keep] = None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); with `keep`, only the kept query row: (B, 1, C), attending over all N keys
        (up to and including itself when `causal`)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3×(B, H, N, C/H)
        if keep is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, N, C/H)
            return self.out(o.transpose(1, 2).reshape(B, N, C))
        q = take_row(q.transpose(1, 2), keep).transpose(1, 2)  # (B, H, 1, C/H)
        mask = None
        if causal:  # the kept row sees the positions up to its own
            upto = torch.as_tensor(keep, device=x.device).reshape(-1, 1)  # (B or 1, 1)
            mask = (torch.arange(N, device=x.device) <= upto)[:, None, None, :]  # (B or 1, 1, 1, N)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 1, C/H)
        return self.out(o.transpose(1, 2).reshape(B, 1, C))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = make_act(act)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, norm_first: bool, eps: float):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(self, x: torch.Tensor, causal: bool = False, keep: Optional[Keep] = None) -> torch.Tensor:
        """(B, N, W) -> (B, N, W); with `keep` only the kept row's output, (B, 1, W) (see `Transformer`)."""
        r = x if keep is None else take_row(x, keep)  # the rows this block outputs
        if self.norm_first:
            r = r + self.attn(self.ln_1(x), causal, keep)
            return r + self.mlp(self.ln_2(r))
        r = self.ln_1(r + self.attn(x, causal, keep))
        return self.ln_2(r + self.mlp(r))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: str, norm_first: bool = True,
                 eps: float = 1e-5):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, act, norm_first, eps) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, causal: bool = False, keep: Optional[Keep] = None) -> torch.Tensor:
        """(B, N, W) -> (B, N, W). `keep` (a position, or (B,) positions): the caller pools that one row per
        sequence, so the last block computes only it and returns (B, 1, W). Exact: the earlier blocks still
        produce every position's keys and values. In the last block the other rows' attention output, output
        projection and MLP are skipped: ~6% of a ViT-B/32 image forward, more in shallow towers."""
        if keep is not None and not len(self.blocks):
            return take_row(x, keep)
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            k = keep if i == last else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, causal, k, use_reentrant=False)
            else:
                x = blk(x, causal, k)
        return x


class AttentionPoolHead(nn.Module):
    """SigLIP's multi-head attention pooling (MAP): a learned probe attends over the tokens, then an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width ** -0.5)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layernorm = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, W) -> (B, W)
        probe = self.probe.expand(x.shape[0], -1, -1)
        h = self.attention(probe, x, x, need_weights=False)[0]
        h = h + self.mlp(self.layernorm(h))
        return h[:, 0]
