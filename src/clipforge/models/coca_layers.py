"""The attention pieces CoCa adds to clipforge's transformer blocks (`layers.py`): self-attention under a padding
mask, cross-attention from text to image tokens, and open_clip's attentional pooler.

The blocks keep `layers.Block`'s parameter layout (ln_1, attn.qkv fused q|k|v, attn.out, ln_2, mlp.fc,
mlp.proj), so the open_clip converter maps them exactly as it maps CLIP's; a cross-attention block adds the
LayerNorm open_clip applies to the keys and values (`ln_1_kv`). All blocks are pre-norm, as open_clip's.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.models.layers import Attention, Block

__all__ = ["attend", "MaskedBlock", "CrossBlock", "AttentionalPooler", "run_blocks"]


def attend(attn: Attention, x: torch.Tensor, kv: Optional[torch.Tensor] = None,
           mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-head attention of queries x (B, N, C) over keys/values kv (B, M, C; default x itself) with a
    boolean `mask` broadcastable to (B, heads, N, M), True where a query may attend. Returns (B, N, C)."""
    B, N, C = x.shape
    H = attn.heads
    w, b = attn.qkv.weight, attn.qkv.bias
    if kv is None:
        q, k, v = F.linear(x, w, b).view(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, C/H)
    else:
        (wq, wkv), (bq, bkv) = w.split([C, 2 * C]), b.split([C, 2 * C])
        M = kv.shape[1]
        q = F.linear(x, wq, bq).view(B, N, H, C // H).transpose(1, 2)             # (B, H, N, C/H)
        k, v = F.linear(kv, wkv, bkv).view(B, M, 2, H, C // H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, M, C/H)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                    # (B, H, N, C/H)
    return attn.out(o.transpose(1, 2).reshape(B, N, C))


class MaskedBlock(Block):
    """A pre-norm transformer block whose self-attention takes a boolean mask (causal and padding together)."""

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + attend(self.attn, self.ln_1(x), mask=mask)
        return x + self.mlp(self.ln_2(x))


class CrossBlock(Block):
    """A pre-norm block whose attention reads another sequence: queries ln_1(x), keys and values ln_1_kv(kv)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__(width, heads, mlp_ratio, act, True, eps)
        self.ln_1_kv = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        x = x + attend(self.attn, self.ln_1(x), self.ln_1_kv(kv))
        return x + self.mlp(self.ln_2(x))


def run_blocks(blocks, x: torch.Tensor, *args, grad_checkpointing: bool = False) -> torch.Tensor:
    """x through each block in turn (`args` passed to every one), checkpointed when asked and training."""
    for blk in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, x, *args, use_reentrant=False)
        else:
            x = blk(x, *args)
    return x


class AttentionalPooler(nn.Module):
    """open_clip's `AttentionalPooler`: `n_queries` learned queries (LayerNormed) attend over the LayerNormed
    tokens of width `context_dim`, giving (B, n_queries, d_model). CoCa's image tower uses its first output as
    the pooled (contrastive) feature and the others as the tokens the caption decoder reads."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int, eps: float = 1e-5):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(d_model, eps=eps)
        self.ln_k = nn.LayerNorm(context_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, context_dim) -> (B, n_queries, d_model)
        x = self.ln_k(x)
        q = self.ln_q(self.query).to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, x, x, need_weights=False)[0]
