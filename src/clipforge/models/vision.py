"""Vision transformer tower: patch embedding, optional class token, transformer, pooling, projection.

Built from a `ViTConfig`, which validated itself (`config_checks`): nothing is checked again here."""
from __future__ import annotations

import torch
from torch import nn

from clipforge.models.layers import AttentionPoolHead, Transformer
from clipforge.models.output import TowerOutput
from clipforge.models.token_merge import merged_pooled


class ConvStem(nn.Module):
    """ViT-C stem (Xiao et al., "Early Convolutions Help Transformers See Better", 2021): log2(patch) 3x3
    stride-2 convs with GroupNorm + GELU, then a 1x1 conv to the width. Same token grid as a patch conv, but
    optimisation is far easier, which matters most for small models trained from scratch."""

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        n = patch_size.bit_length() - 1  # a power of two >= 2 (config_checks)
        chans = [3] + [max(width // 2 ** (n - i), 8) for i in range(1, n + 1)]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.GroupNorm(1, cout), nn.GELU()]
        layers.append(nn.Conv2d(chans[-1], width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, W, H/p, W/p)
        return self.net(x)


class VisionTower(nn.Module):
    token_merge = None  # a `token_merge.TokenMerge` (set by `apply_token_merge`): merged blocks for pooled output

    def __init__(self, cfg, embed_dim: int):
        """`cfg`: a `ViTConfig`."""
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.grid = cfg.image_size // cfg.patch_size
        if cfg.stem == "conv":
            self.conv = ConvStem(W, cfg.patch_size)
        else:  # "patch"
            self.conv = nn.Conv2d(3, W, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(torch.randn(W) * W ** -0.5) if cfg.pool == "cls" else None
        n_tokens = self.grid ** 2 + (1 if cfg.pool == "cls" else 0)
        self.positional_embedding = nn.Parameter(torch.randn(n_tokens, W) * W ** -0.5)
        self.ln_pre = nn.LayerNorm(W, eps=cfg.ln_eps) if cfg.ln_pre else nn.Identity()
        self.transformer = Transformer(W, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.norm_first, cfg.ln_eps)
        self.ln_post = nn.LayerNorm(W, eps=cfg.ln_eps)
        self.head = AttentionPoolHead(W, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps) if cfg.pool == "map" else None
        self.proj = nn.Linear(W, embed_dim, bias=cfg.proj_bias) if cfg.proj else nn.Identity()

    @property
    def dtype(self) -> torch.dtype:  # what CLIPModel.dtype reads
        return self.positional_embedding.dtype

    def forward(self, pixels: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        x = self.conv(pixels)  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + g*g, W)
        x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
        if self.token_merge is not None and not return_tokens:  # per-patch tokens are computed unmerged
            return TowerOutput(merged_pooled(self, x), None)
        if self.cfg.pool == "cls" and not return_tokens:  # only the class token's last-block row is needed
            return TowerOutput(self.proj(self.ln_post(self.transformer(x, keep=0))[:, 0]), None)
        x = self.ln_post(self.transformer(x))
        patches = x[:, 1:] if self.class_embedding is not None else x  # (B, g*g, W)
        if self.cfg.pool == "cls":
            pooled = x[:, 0]
        elif self.cfg.pool == "mean":
            pooled = patches.mean(dim=1)
        else:
            pooled = self.head(x)
        pooled = self.proj(pooled)  # (B, D)
        return TowerOutput(pooled, self.proj(patches) if return_tokens else None)
