"""Projection heads that map a pretrained tower's features into the shared embedding space.

`linear`: one Linear (LiT, open_clip's `proj_type: linear`). `mlp`: Linear -> GELU -> Linear (open_clip's
`proj_type: mlp`; the projector of "From Unimodal to Multimodal: Scaling up Projectors to Align Modalities").
Heads apply to the last dimension, so the same head maps pooled (B, F) and token (B, N, F) features.
"""
from __future__ import annotations

import torch
from torch import nn

HEADS = ("linear", "mlp")


def projection_head(kind: str, in_dim: int, out_dim: int, hidden: int = 0) -> nn.Module:
    """A head from `in_dim` features to `out_dim`; `hidden` (mlp only) defaults to max(in_dim, out_dim)."""
    if kind == "linear":
        head = nn.Linear(in_dim, out_dim)
        nn.init.normal_(head.weight, std=in_dim ** -0.5)
        nn.init.zeros_(head.bias)
        return head
    if kind == "mlp":
        h = hidden or max(in_dim, out_dim)
        head = nn.Sequential(nn.Linear(in_dim, h), nn.GELU(), nn.Linear(h, out_dim))
        for lin in (head[0], head[2]):
            nn.init.normal_(lin.weight, std=lin.in_features ** -0.5)
            nn.init.zeros_(lin.bias)
        return head
    raise ValueError(f"unknown head {kind!r}; valid: {', '.join(HEADS)}")  # configs validate before this


def is_pretrained_tower(tower: nn.Module) -> bool:
    """EfficientNetTower, TimmTower, HFTextTower: an encoder (`features`) and a projection head (`head`)."""
    return hasattr(tower, "feature_dim")


def tower_features(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a frozen tower contributes before anything trainable: a pretrained encoder's pooled features
    (before its head), or a fully frozen clipforge tower's (unnormalised) embedding."""
    return tower.features(x) if is_pretrained_tower(tower) else tower(x).pooled


def tower_head(tower: nn.Module):
    """What maps `tower_features` to the embedding: the projection head, or nothing for a clipforge tower."""
    return tower.head if is_pretrained_tower(tower) else nn.Identity()
