"""Model architectures as data: frozen dataclass configs and a registry of named configs.

`create_model(name, **overrides)` builds any registered config; adding an architecture is adding a config.
Unknown keys are an error that lists the valid ones (a typo must never be silently ignored).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from clipforge.errors import UsageError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN = (0.5, 0.5, 0.5)  # SigLIP normalises to [-1, 1]
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"  # quick_gelu (OpenAI) | gelu | gelu_tanh (SigLIP)
    pool: str = "cls"  # cls (class token) | mean (mean of patch tokens) | map (attention-pool head, SigLIP)
    ln_pre: bool = True  # LayerNorm after patch + position embedding (OpenAI CLIP)
    norm_first: bool = True  # pre-norm residual blocks; False = post-norm
    patch_bias: bool = False  # bias in the patch-embedding conv (SigLIP: True)
    stem: str = "patch"  # patch (one conv, kernel = stride = patch) | conv (stacked 3x3 stride-2 convs, ViT-C)
    proj: bool = True  # final linear projection to embed_dim (SigLIP: none, width == embed_dim)
    proj_bias: bool = False
    ln_eps: float = 1e-5


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"
    causal: bool = True  # CLIP: causal mask; SigLIP: bidirectional
    pool: str = "argmax"  # argmax (highest id = end token, OpenAI) | eos (first eos_token_id) | last | first | mean
    eos_token_id: Optional[int] = None  # needed by pool="eos"
    pad_token_id: int = 0  # used by pool="mean" to ignore padding
    proj: bool = True
    proj_bias: bool = False  # SigLIP's text head has a bias
    ln_eps: float = 1e-5
    # Long-CLIP stretching (models/stretch.py): the context length this tower had before its positions were
    # stretched (None: never stretched), how many leading positions were kept and by what factor the rest
    # were interpolated, and which positions a text that still fits in the old context uses: "original"
    # (exactly its old ones, so its embedding is unchanged) or "stretched" (consecutive new ones, as Long-CLIP).
    stretched_from: Optional[int] = None
    stretch_keep: int = 20
    stretch_factor: int = 4
    short_positions: str = "original"


@dataclass(frozen=True)
class PreprocessConfig:
    mean: Tuple[float, float, float] = OPENAI_MEAN
    std: Tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"  # bicubic | bilinear | nearest
    resize_mode: str = "shortest"  # shortest (resize shortest side + centre crop) | squash (resize to square)
    crop_scale: Tuple[float, float] = (0.9, 1.0)  # train: random resized crop area range (open_clip default)
    hflip: bool = False  # train: random horizontal flip (off by default: text may say left/right)
    per_image_norm: bool = False  # standardise each image by its own mean/std after normalisation
    # Whose eval pipeline to copy bit for bit (docs/fidelity.md): "open_clip" (torchvision: crop offset
    # round-half-even, non-RGB images resized in their own mode and converted after the crop) or "hf"
    # (transformers' image processors: crop offset floored, transparency composited on white first).
    convention: str = "open_clip"


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: Optional[float] = None  # set for sigmoid (SigLIP) heads, e.g. -10
    name: str = ""

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CLIPConfig":
        return _build(cls, d, "config")

    def replace(self, **overrides) -> "CLIPConfig":
        """A copy with overrides; nested towers take dicts: `cfg.replace(vision={"layers": 3})`."""
        return _build(CLIPConfig, _merge(self.to_dict(), overrides, "config"), "config")


_NESTED = {"vision": VisionConfig, "text": TextConfig, "preprocess": PreprocessConfig}


def _check_keys(cls, d: Dict[str, Any], where: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise UsageError(f"unknown {where} key(s) {unknown}; valid keys: {', '.join(valid)}")


def _build(cls, d: Dict[str, Any], where: str):
    d = dict(d)
    _check_keys(cls, d, where)
    for name, sub in _NESTED.items():
        if cls is CLIPConfig and name in d and isinstance(d[name], dict):
            d[name] = _build(sub, d[name], f"{where}.{name}")
    for f in dataclasses.fields(cls):  # JSON gives lists where the config holds tuples
        if f.name in d and isinstance(d[f.name], list):
            d[f.name] = tuple(d[f.name])
    return cls(**d)


def _merge(base: Dict[str, Any], overrides: Dict[str, Any], where: str) -> Dict[str, Any]:
    out = dict(base)
    _check_keys(CLIPConfig, overrides, where)
    for k, v in overrides.items():
        if k in _NESTED and isinstance(v, dict):
            nested = dict(out[k])
            _check_keys(_NESTED[k], v, f"{where}.{k}")
            nested.update(v)
            out[k] = nested
        elif k in _NESTED and dataclasses.is_dataclass(v):
            out[k] = dataclasses.asdict(v)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------------------- registry
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
        vision=VisionConfig(image_size=image_size, patch_size=patch, width=width, layers=layers, heads=heads),
        text=TextConfig(width=text_width, heads=text_heads, layers=text_layers),
    )


# The tiny config every unit test uses (milliseconds on CPU). Mean pooling: a tiny class-token ViT trained from
# scratch did not learn contrastively at all (at init its image features barely depended on the input, cosine
# ~0.998 between different images, and the loss sat at ln(batch)), while the same ViT with mean pooling did.
register_model(
    "tiny",
    CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(image_size=32, patch_size=4, width=64, layers=2, heads=2, pool="mean", act="gelu"),
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
        vision=VisionConfig(
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
