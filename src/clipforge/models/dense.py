"""Dense image features: one joint-space embedding per spatial cell of an image tower, `(B, H', W', D)`.

Pooled CLIP embeddings say *that* an image matches a text; the cells of these grids, compared with the same text
embedding, say *where*. Per tower:

- ViT (`VisionTower`): the patch tokens through `ln_post` and the projection. `method="maskclip"` (the
  default) replaces the last block's attention by its value path for the patch tokens, as MaskCLIP does (Zhou,
  Loy & Dai, "Extract Free Dense Labels from CLIP", ECCV 2022): `v = out(v_proj(ln_1(x))) + x`, then the block's
  MLP. A patch then carries its own content rather than the global summary the last attention mixes in, which
  keeps patch features aligned with text. `method="tokens"` keeps the last block as it is.
- ResNet (`ResNetTower`): the last stage's feature map through the attention pool's value and output
  projections (the pool's query-key attention is what is dropped; MaskCLIP's ResNet recipe): `maskclip`.
- EfficientNet (`EfficientNetTower`): each cell of the backbone's last feature map through the projection
  head, the tower's only dense path: `tokens`. With a linear head (the registered `lite0-minilm`) the mean of
  the cells' embeddings is the pooled embedding exactly.

`method="auto"` picks maskclip where the tower has it, tokens otherwise. Inputs may be larger than the
tower's `image_size` (any multiple of `dense_stride`): the positional embeddings are interpolated (bicubic),
so a big canvas gives a finer grid at the objects' own scale. Token merging (`models.token_merge`) never
applies here: every patch keeps its own token.

`gradcam_maps` is the gradient-based alternative (Selvaraju et al., "Grad-CAM", ICCV 2017) on the pooled
image-text cosine: the activations of the tower's last spatial layer weighted by their spatially averaged
gradients, then ReLU.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from clipforge.errors import UsageError
from clipforge.models.efficientnet import EfficientNetTower
from clipforge.models.resnet import ResNetTower
from clipforge.models.transforms import EvalTransform
from clipforge.models.vision import VisionTower

__all__ = ["DENSE_METHODS", "dense_features", "gradcam_maps", "dense_stride", "dense_transform",
           "default_dense_size", "resolve_dense_method"]

DENSE_METHODS = ("auto", "maskclip", "tokens")
_TOWER_METHODS = {VisionTower: ("maskclip", "tokens"), ResNetTower: ("maskclip",), EfficientNetTower: ("tokens",)}
MIN_GRID = 7  # the default input size gives at least this many cells a side


def _tower(model):
    tower = getattr(model, "visual", model)
    for cls in _TOWER_METHODS:
        if isinstance(tower, cls):
            return tower, cls
    raise UsageError(f"dense features need a ViT, ResNet or EfficientNet image tower; this model's is "
                     f"{type(tower).__name__}")


def resolve_dense_method(model, method: str = "auto") -> str:
    """The dense `method` this model's image tower runs: "auto" -> maskclip where it has it, else tokens."""
    _, cls = _tower(model)
    offered = _TOWER_METHODS[cls]
    if method == "auto":
        return offered[0]
    if method not in DENSE_METHODS:
        raise UsageError(f"unknown dense `method` {method!r}; valid: {', '.join(DENSE_METHODS)}")
    if method not in offered:
        raise UsageError(f"`method` {method!r} is not offered by a {cls.__name__} image tower (it offers "
                         f"{', '.join(offered)})")
    return method


def dense_stride(model) -> int:
    """Pixels per grid cell: the ViT patch size, 32 for the convnets."""
    tower, cls = _tower(model)
    return tower.cfg.patch_size if cls is VisionTower else 32


def default_dense_size(model) -> int:
    """The tower's own `image_size`, or more where that gives fewer than `MIN_GRID` cells a side (a 32-px
    ResNet has one cell: nothing to localise)."""
    s, size = dense_stride(model), model.config.vision.image_size
    return max(size, MIN_GRID * s)


def dense_transform(model, size: int):
    """PIL image -> (3, size, size): the model's eval preprocessing, squashing the whole image to the square
    (never cropping), so every grid cell maps back onto the image as given."""
    stride = dense_stride(model)
    if size < stride or size % stride:
        raise UsageError(f"`size` must be a positive multiple of {stride} (this tower's cell), got {size}")
    return EvalTransform(size, dataclasses.replace(model.config.preprocess, resize_mode="squash"))


def _grid_pos(pos: torch.Tensor, grid: int, hw: tuple[int, int]) -> torch.Tensor:
    """(n_extra + g*g, W) positional embeddings -> (n_extra + h*w, W), the grid part resized bicubically."""
    if hw == (grid, grid):
        return pos
    extra, cells = pos[: pos.shape[0] - grid * grid], pos[pos.shape[0] - grid * grid:]
    cells = cells.reshape(1, grid, grid, -1).permute(0, 3, 1, 2).float()
    cells = F.interpolate(cells, size=hw, mode="bicubic", align_corners=False)
    return torch.cat([extra, cells.permute(0, 2, 3, 1).reshape(hw[0] * hw[1], -1).to(pos.dtype)])


def _check_size(pixels: torch.Tensor, stride: int) -> tuple[int, int]:
    h, w = pixels.shape[-2:]
    if h % stride or w % stride:
        raise UsageError(f"dense features need pixels whose height and width are multiples of {stride}, got {h}x{w}")
    return h // stride, w // stride


def _vit_before_last(tower: VisionTower, pixels: torch.Tensor):
    """Every token entering the last block, (B, n_cls + h*w, W), with n_cls and (h, w)."""
    hw = _check_size(pixels, tower.cfg.patch_size)
    x = tower.conv(pixels.to(tower.dtype)).flatten(2).transpose(1, 2)  # (B, h*w, W)
    n_cls = 0
    if tower.class_embedding is not None:
        x = torch.cat([tower.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        n_cls = 1
    x = tower.ln_pre(x + _grid_pos(tower.positional_embedding, tower.grid, hw).to(x.dtype))
    for blk in tower.transformer.blocks[:-1]:  # block by block: no token merging, no kept-row shortcut
        x = blk(x)
    return x, n_cls, hw


def _value_path(blk, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: each token's value through the output projection (no query-key mixing), the
    residual, then the MLP. (B, N, W) -> (B, N, W)."""
    W = x.shape[-1]

    def value(h):
        return blk.attn.out(F.linear(h, blk.attn.qkv.weight[2 * W:], blk.attn.qkv.bias[2 * W:]))

    if blk.norm_first:
        r = x + value(blk.ln_1(x))
        return r + blk.mlp(blk.ln_2(r))
    r = blk.ln_1(x + value(x))
    return blk.ln_2(r + blk.mlp(r))


def _vit_dense(tower: VisionTower, pixels: torch.Tensor, method: str) -> torch.Tensor:
    x, n_cls, (h, w) = _vit_before_last(tower, pixels)
    if len(tower.transformer.blocks):
        last = tower.transformer.blocks[-1]
        x = _value_path(last, x) if method == "maskclip" else last(x)
    x = tower.proj(tower.ln_post(x[:, n_cls:]))  # (B, h*w, D)
    return x.reshape(x.shape[0], h, w, -1)


def _resnet_map(tower: ResNetTower, pixels: torch.Tensor) -> torch.Tensor:
    _check_size(pixels, 32)
    return tower.stages(tower.stem(pixels.to(tower.dtype).contiguous(memory_format=torch.channels_last)))


def _resnet_pool_input(tower: ResNetTower, fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 1 + h*w, C): the mean token and every cell, with (interpolated) positions."""
    a = tower.attnpool
    x = fmap.flatten(2).transpose(1, 2)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
    return x + _grid_pos(a.positional_embedding, tower.grid, tuple(fmap.shape[-2:])).to(x.dtype)


def _resnet_dense(tower: ResNetTower, pixels: torch.Tensor) -> torch.Tensor:
    fmap = _resnet_map(tower, pixels)
    B, _, h, w = fmap.shape
    a = tower.attnpool
    cells = a.c_proj(a.v_proj(_resnet_pool_input(tower, fmap)[:, 1:]))  # (B, h*w, D)
    return cells.reshape(B, h, w, -1)


def _resnet_pooled(tower: ResNetTower, fmap: torch.Tensor) -> torch.Tensor:
    """The attention pool on a feature map of any grid (what `AttentionPool2d` does at its own grid)."""
    a, x = tower.attnpool, _resnet_pool_input(tower, fmap)
    B, N, C = x.shape

    def split(t):
        return t.view(B, -1, a.heads, C // a.heads).transpose(1, 2)

    o = F.scaled_dot_product_attention(split(a.q_proj(x[:, :1])), split(a.k_proj(x)), split(a.v_proj(x)))
    return a.c_proj(o.transpose(1, 2).reshape(B, C))


def _effnet_dense(tower: EfficientNetTower, pixels: torch.Tensor) -> torch.Tensor:
    _check_size(pixels, 32)
    fmap = tower.backbone.forward_features(pixels.to(tower.dtype))  # (B, 1280, h, w)
    return tower.head(fmap.permute(0, 2, 3, 1))  # (B, h, w, D)


def dense_features(model, pixels: torch.Tensor, method: str = "auto", normalize: bool = True) -> torch.Tensor:
    """(B, 3, H, W) preprocessed pixels -> (B, H/s, W/s, D) joint-space features (s = `dense_stride`), each
    cell L2-normalised unless `normalize=False`. Runs under the caller's grad mode."""
    method = resolve_dense_method(model, method)
    tower, cls = _tower(model)
    if cls is VisionTower:
        x = _vit_dense(tower, pixels, method)
    elif cls is ResNetTower:
        x = _resnet_dense(tower, pixels)
    else:
        x = _effnet_dense(tower, pixels)
    return F.normalize(x, dim=-1) if normalize else x


def _activations_and_pooled(tower, cls, pixels: torch.Tensor):
    """Grad-CAM's target: (the leaf the gradient is taken at, `to_grid` mapping a tensor shaped like it to
    (B, h, w, C), pooled (B, D) computed from it)."""
    if cls is VisionTower:
        x, n_cls, (h, w) = _vit_before_last(tower, pixels)
        x = x.detach().requires_grad_(True)

        def to_grid(t):
            return t[:, n_cls:].reshape(t.shape[0], h, w, -1)
        y = tower.transformer.blocks[-1](x) if len(tower.transformer.blocks) else x
        y = tower.ln_post(y)
        if tower.cfg.pool == "cls":
            pooled = y[:, 0]
        elif tower.cfg.pool == "mean":
            pooled = y[:, n_cls:].mean(dim=1)
        else:
            pooled = tower.head(y)
        return x, to_grid, tower.proj(pooled)

    def channels_last(t):
        return t.permute(0, 2, 3, 1)

    if cls is ResNetTower:
        fmap = _resnet_map(tower, pixels).detach().requires_grad_(True)
        return fmap, channels_last, _resnet_pooled(tower, fmap)
    _check_size(pixels, 32)
    fmap = tower.backbone.forward_features(pixels.to(tower.dtype)).detach().requires_grad_(True)
    return fmap, channels_last, tower.head(fmap.mean(dim=(2, 3)))


def gradcam_maps(model, pixels: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of the pooled image-text cosine: (B, 3, H, W) pixels, (T, D) text embeddings -> (B, T, h, w)
    float32 maps (>= 0), at the grid of the tower's last spatial layer (ViT: the tokens entering the last
    block; ResNet: the last stage; EfficientNet: the head conv). Gradients flow from the layer up only (the
    tower's weights get none)."""
    tower, cls = _tower(model)
    with torch.enable_grad():
        leaf, to_grid, pooled = _activations_and_pooled(tower, cls, pixels)
        acts = to_grid(leaf.detach()).float()  # (B, h, w, C)
        sims = F.normalize(pooled.float(), dim=-1) @ F.normalize(text_feats.to(pooled.device).float(), dim=-1).T
        maps = []
        for t in range(sims.shape[1]):
            (g,) = torch.autograd.grad(sims[:, t].sum(), leaf, retain_graph=t + 1 < sims.shape[1])
            weights = to_grid(g).float().mean(dim=(1, 2), keepdim=True)  # (B, 1, 1, C): channel importance
            maps.append(F.relu((weights * acts).sum(dim=-1)))  # (B, h, w)
    return torch.stack(maps, dim=1)
