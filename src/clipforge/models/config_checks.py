"""Validation of model configs, in one place: every config dataclass (`models/config.py`) calls its check here
when constructed, and every failure is a one-line `UsageError` naming the key.

Types, ranges, choices, divisibility (width by heads, image size by patch size) and, for a whole `CLIPConfig`,
the model's parameter count (`param_count`, on the meta device: nothing allocated), refused beyond
MAX_PARAMETERS. So a hostile or mistyped `config.json` fails before a single tensor is allocated, and the
towers built from a config trust it.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from typing import Optional

from clipforge.errors import UsageError
from clipforge.models.param_count import count_parameters

__all__ = ["MAX_PARAMETERS", "MAX_LAYERS", "own_projection", "check_vit", "check_resnet", "check_efficientnet",
           "check_timm", "check_text", "check_preprocess", "check_clip"]

MAX_PARAMETERS = 20_000_000_000  # far above any CLIP (ViT-bigG/14 is 2.5 B); beyond it is a broken config
MAX_LAYERS = 1024                # a config asking for more blocks is broken (even tiny ones take minutes)
VISION_ACTS = TEXT_ACTS = ("quick_gelu", "gelu", "gelu_tanh")
VISION_POOLS = ("cls", "mean", "map")
TEXT_POOLS = ("argmax", "eos", "last", "first", "mean")
STEMS = ("patch", "conv")
EFFICIENTNET_VARIANTS = ("lite0", "lite1", "lite2", "lite3", "lite4")
HEADS = ("linear", "mlp")  # projection heads of pretrained towers (models/projection.py)
HF_POOLINGS = ("mean", "cls", "eos")
MAX_HF_CONFIG_CHARS = 100_000  # a Hugging Face config.json is ~1 kB; a larger stored one is broken or hostile
SHORT_POSITIONS = ("original", "stretched")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash")
CONVENTIONS = ("open_clip", "hf", "hf_torchvision")  # whose eval preprocessing to copy (models/transforms.py)
TIMM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")  # timm model names (resnet18, vit_base_patch16_224.augreg_in1k)


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


def _floats(cfg, key: str, where: str, n: int) -> None:
    v = getattr(cfg, key)
    if (not isinstance(v, (list, tuple)) or len(v) != n
            or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
        _fail(f"{where}.{key}", f"a list of {n} finite numbers", v)
    object.__setattr__(cfg, key, tuple(float(x) for x in v))  # JSON lists -> the tuples the config holds


def _transformer(cfg, where: str, acts) -> None:
    """What the ViT and text transformers share: width, layers, heads, MLP, activation, LayerNorm eps."""
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


def _head(cfg, where: str) -> None:
    _choice(cfg, "head", where, HEADS)
    _int(cfg, "head_hidden", where, lo=0, hi=1 << 20)


def check_vit(cfg) -> None:
    w = "vision"
    _int(cfg, "image_size", w)
    _int(cfg, "patch_size", w)
    _transformer(cfg, w, VISION_ACTS)
    _choice(cfg, "pool", w, VISION_POOLS)
    _choice(cfg, "stem", w, STEMS)
    _bool(cfg, ("ln_pre", "norm_first", "patch_bias", "proj", "proj_bias"), w)
    if cfg.image_size % cfg.patch_size:
        raise UsageError(f"vision.image_size ({cfg.image_size}) must be a multiple of vision.patch_size "
                         f"({cfg.patch_size})")
    if cfg.stem == "conv" and (cfg.patch_size < 2 or cfg.patch_size & (cfg.patch_size - 1)):
        raise UsageError(f"vision.stem 'conv' needs a power-of-two vision.patch_size >= 2, got {cfg.patch_size}")


def check_resnet(cfg) -> None:
    v = cfg.stage_layers
    if (not isinstance(v, (list, tuple)) or len(v) != 4
            or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and 1 <= x <= MAX_LAYERS
                       for x in v)):
        _fail("vision.stage_layers", f"a list of 4 integers in [1, {MAX_LAYERS}]", v)
    object.__setattr__(cfg, "stage_layers", tuple(int(x) for x in v))
    _int(cfg, "image_size", "vision")
    _int(cfg, "width", "vision")
    _int(cfg, "heads", "vision")
    if cfg.width < 2 or cfg.width % 2:
        _fail("vision.width", "an even integer >= 2 (the ResNet stem's first convs are width / 2 wide)",
              cfg.width)
    if cfg.image_size % 32:
        raise UsageError(f"vision.arch 'resnet' needs vision.image_size a multiple of 32, got {cfg.image_size}")
    if (cfg.width * 32) % cfg.heads:
        raise UsageError(f"vision.arch 'resnet': the attention pool's width ({cfg.width * 32} = 32 x "
                         f"vision.width) must be divisible by vision.heads ({cfg.heads})")


def check_efficientnet(cfg) -> None:
    _choice(cfg, "variant", "vision", EFFICIENTNET_VARIANTS)
    _head(cfg, "vision")
    if cfg.pretrained is not None and not isinstance(cfg.pretrained, str):
        _fail("vision.pretrained", "\"package\", a weights file path, or null", cfg.pretrained)
    _int(cfg, "image_size", "vision")
    if cfg.image_size < 32 or cfg.image_size % 32:
        raise UsageError(f"vision.arch 'efficientnet' needs vision.image_size a multiple of 32, got "
                         f"{cfg.image_size}")


def check_timm(cfg) -> None:
    for key in ("model", "pool"):
        v = getattr(cfg, key)
        if (v is not None or key == "model") and (not isinstance(v, str) or not TIMM_NAME.match(v)):
            _fail(f"vision.{key}", "a timm name (letters, digits, _ . -)" + (" or null" if key == "pool" else ""), v)
    _head(cfg, "vision")
    if cfg.pretrained is not None and (not isinstance(cfg.pretrained, str) or not cfg.pretrained.strip()):
        _fail("vision.pretrained", "a local weights file or directory, or null", cfg.pretrained)
    if cfg.image_size is not None:
        _int(cfg, "image_size", "vision", lo=16, hi=8192)
    _bool(cfg, ("timm_preprocess",), "vision")
    _int(cfg, "feature_dim", "vision", lo=0, hi=1 << 20)


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


def check_text(cfg) -> None:
    w = "text"
    _int(cfg, "vocab_size", w)
    _int(cfg, "context_length", w)
    _transformer(cfg, w, TEXT_ACTS)
    _choice(cfg, "pool", w, TEXT_POOLS)
    _bool(cfg, ("causal", "proj", "proj_bias"), w)
    _int(cfg, "pad_token_id", w, lo=0, hi=cfg.vocab_size - 1)
    if cfg.eos_token_id is not None:
        _int(cfg, "eos_token_id", w, lo=0, hi=cfg.vocab_size - 1)
    elif cfg.pool == "eos":
        raise UsageError("text.pool 'eos' needs text.eos_token_id")
    if cfg.stretched_from is not None:
        if not cfg.causal or cfg.pool not in ("argmax", "eos"):
            raise UsageError("text.stretched_from (stretched positions) needs a causal text tower pooled at its "
                             "end token (text.pool 'argmax' or 'eos')")
        _choice(cfg, "short_positions", w, SHORT_POSITIONS)
    if cfg.hf is not None:
        if not isinstance(cfg.hf, str) or not cfg.hf.strip():
            _fail("text.hf", "a model directory, packaged model name or hub id", cfg.hf)
        _head(cfg, w)
        if cfg.pooling is not None:
            _choice(cfg, "pooling", w, HF_POOLINGS)
        if cfg.hf_config is not None:
            _hf_config(cfg.hf_config)
    elif cfg.hf_config is not None or cfg.pooling is not None:
        raise UsageError("text.hf_config / text.pooling apply to Hugging Face text towers (set text.hf)")


def check_preprocess(cfg) -> None:
    w = "preprocess"
    _floats(cfg, "mean", w, 3)
    _floats(cfg, "std", w, 3)
    if min(cfg.std) <= 0:
        _fail("preprocess.std", "positive", cfg.std)
    _floats(cfg, "crop_scale", w, 2)
    if not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
        _fail("preprocess.crop_scale", "[lo, hi] with 0 < lo <= hi <= 1", cfg.crop_scale)
    _choice(cfg, "interpolation", w, INTERPOLATIONS)
    _choice(cfg, "resize_mode", w, RESIZE_MODES)
    _choice(cfg, "convention", w, CONVENTIONS)
    _bool(cfg, ("hflip", "per_image_norm"), w)
    _real(cfg, "crop_pct", w)
    if cfg.crop_pct > 1:
        _fail("preprocess.crop_pct", "a number in (0, 1]", cfg.crop_pct)


def own_projection(tower) -> bool:
    """True for clipforge's own towers (ViT, ResNet, text transformer: `proj`); False for pretrained encoders
    with a projection head (EfficientNet, timm, Hugging Face text)."""
    return getattr(tower, "arch", None) not in ("efficientnet", "timm") and getattr(tower, "hf", None) is None


def check_clip(cfg, nested: dict) -> None:
    """The whole config: its parts are of their classes (`nested`: key -> class or tuple of classes), the
    towers' widths meet the embedding, and the model it describes is within MAX_PARAMETERS."""
    for key, cls in nested.items():
        if not isinstance(getattr(cfg, key), cls):
            names = " / ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
            _fail(key, f"a mapping of {names} keys", getattr(cfg, key))
    _int(cfg, "embed_dim", "config")
    _real(cfg, "logit_scale_init", "config", positive=False)
    if cfg.logit_bias_init is not None:
        _real(cfg, "logit_bias_init", "config", positive=False)
    if not isinstance(cfg.name, str):
        _fail("name", "a string", cfg.name)
    for tower in ("vision", "text"):
        t = getattr(cfg, tower)
        if own_projection(t) and not getattr(t, "proj", True) and t.width != cfg.embed_dim:
            raise UsageError(f"{tower}.proj false needs {tower}.width ({t.width}) == embed_dim ({cfg.embed_dim})")
    n = count_parameters(cfg)
    if n is None or n > MAX_PARAMETERS:
        size = "too many" if n is None else f"~{n / 1e9:,.1f} B"
        v, t = cfg.vision, cfg.text
        vision = {"vit": lambda: f"vision {v.width} x {v.layers} layers",
                  "resnet": lambda: f"vision resnet {v.width} x {list(v.stage_layers)} blocks",
                  "efficientnet": lambda: f"vision {v.variant}", "timm": lambda: f"vision timm {v.model}"}[v.arch]()
        raise UsageError(f"this config describes a model of {size} parameters, over the "
                         f"{MAX_PARAMETERS / 1e9:.0f} B limit: check its sizes ({vision}, text {t.width} x "
                         f"{t.layers} layers, vocab {t.vocab_size})")
