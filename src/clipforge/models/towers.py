"""Which tower a config describes: one place that maps a vision config (by `arch`) and a text config (clipforge's
transformer or a Hugging Face encoder) to its module, randomly initialised. `CLIPModel` builds its towers here
and loads pretrained weights into them; `param_count` builds the same towers on the meta device."""
from __future__ import annotations

from torch import nn

from clipforge.models.efficientnet import EfficientNetTower
from clipforge.models.hf_text import HFTextTower
from clipforge.models.resnet import ResNetTower
from clipforge.models.text import TextTower
from clipforge.models.timm_tower import timm_tower
from clipforge.models.vision import VisionTower

__all__ = ["VISION_TOWERS", "vision_tower", "text_tower"]

VISION_TOWERS = {"vit": VisionTower, "resnet": ResNetTower, "efficientnet": EfficientNetTower, "timm": timm_tower}


def vision_tower(cfg, embed_dim: int) -> nn.Module:
    """The image tower of a `ViTConfig`, `ResNetConfig`, `EfficientNetConfig` or `TimmConfig` (no pretrained
    weights; a timm tower needs timm, except for counting: `timm_tower.timm_tower`)."""
    return VISION_TOWERS[cfg.arch](cfg, embed_dim)


def text_tower(cfg, embed_dim: int, pretrained_dir=None) -> nn.Module:
    """The text tower of a `TextConfig`: a Hugging Face encoder (`text.hf`; its weights from `pretrained_dir`
    when given) or clipforge's transformer."""
    if cfg.hf is not None:
        return HFTextTower(cfg, embed_dim, pretrained_dir=pretrained_dir)
    return TextTower(cfg, embed_dim)
