"""CoCa configs (Yu et al., "CoCa: Contrastive Captioners are Image-Text Foundation Models", 2022; open_clip's
`CoCa`): a `CLIPConfig` plus the caption decoder and the image tower's attentional pooler.

    CoCaConfig(embed_dim, vision=ViTConfig(pool="cls"), text=TextConfig(...), decoder=DecoderConfig(...),
               pooler_queries=256, pooler_heads=8, cls_mask="legacy")

open_clip's constraints hold: the decoder's width equals the text width and embed_dim (its cross-attention
reads the D-wide image tokens, its self-attention the text tower's W-wide features). `text.context_length` is
the tokenizer's (open_clip: 76); the text tower holds one position more, for its appended class token.
Stored configs carry `family: "coca"` (`config_family.config_from_dict` reads it). Registered here: `coca-tiny`
(the unit tests' and the demo's) and open_clip's `coca_ViT-B-32` shapes.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict

from clipforge.errors import UsageError
from clipforge.models.config import CLIPConfig, TextConfig, ViTConfig
from clipforge.models.model_registry import register_model

__all__ = ["DecoderConfig", "CoCaConfig", "COCA_FAMILY", "CLS_MASKS"]

COCA_FAMILY = "coca"
CLS_MASKS = ("legacy", "correct")
_ACTS = ("quick_gelu", "gelu", "gelu_tanh")


def _positive_int(v, key: str) -> None:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
        raise UsageError(f"{key} must be an integer >= 1, got {v!r}")


@dataclass(frozen=True)
class DecoderConfig:
    """The multimodal text decoder: `layers` x (causal self-attention block + cross-attention block)."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    act: str = "gelu"
    ln_eps: float = 1e-5

    def __post_init__(self):
        for key in ("width", "layers", "heads"):
            _positive_int(getattr(self, key), f"decoder.{key}")
        if self.layers > 1024:
            raise UsageError(f"decoder.layers must be an integer in [1, 1024], got {self.layers}")
        if self.width % self.heads:
            raise UsageError(f"decoder.width ({self.width}) must be divisible by decoder.heads ({self.heads})")
        if not isinstance(self.mlp_ratio, numbers.Real) or isinstance(self.mlp_ratio, bool) \
                or int(self.width * self.mlp_ratio) < 1:
            raise UsageError(f"decoder.mlp_ratio must be a number giving a non-empty MLP, got {self.mlp_ratio!r}")
        if self.act not in _ACTS:
            raise UsageError(f"decoder.act must be one of {list(_ACTS)}, got {self.act!r}")
        if not isinstance(self.ln_eps, numbers.Real) or isinstance(self.ln_eps, bool) or not self.ln_eps > 0:
            raise UsageError(f"decoder.ln_eps must be a finite number > 0, got {self.ln_eps!r}")


@dataclass(frozen=True)
class CoCaConfig(CLIPConfig):
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pooler_queries: int = 256  # image tower: learned queries; the first is the pooled feature, the rest tokens
    pooler_heads: int = 8
    cls_mask: str = "legacy"   # text padding mask: "legacy" (open_clip's released weights) | "correct"
    family: str = field(default=COCA_FAMILY, init=False)

    def __post_init__(self):
        # the parts' kinds first: the parameter bound (CLIPConfig's check) builds CoCa towers from them
        if not isinstance(self.decoder, DecoderConfig):
            raise UsageError(f"decoder must be a mapping of DecoderConfig keys, got {self.decoder!r}")
        v, t, d = self.vision, self.text, self.decoder
        if not isinstance(v, ViTConfig) or v.pool != "cls" or v.stem != "patch" or not v.norm_first:
            raise UsageError("a CoCa image tower is a ViT (vision.arch vit) with vision.pool 'cls', vision.stem "
                             "'patch' and vision.norm_first true")
        for key in ("pooler_queries", "pooler_heads"):
            _positive_int(getattr(self, key), key)
        if isinstance(self.embed_dim, int) and self.embed_dim % self.pooler_heads:
            raise UsageError(f"embed_dim ({self.embed_dim}) must be divisible by pooler_heads ({self.pooler_heads})")
        super().__post_init__()
        if t.hf is not None or not t.causal:
            raise UsageError("a CoCa text tower is clipforge's causal transformer (no text.hf, text.causal true)")
        if not (d.width == t.width == self.embed_dim):
            raise UsageError(f"CoCa needs decoder.width ({d.width}) == text.width ({t.width}) == embed_dim "
                             f"({self.embed_dim}): the decoder reads the text features and the image tokens")
        if self.pooler_queries < 2:
            raise UsageError(f"pooler_queries must be >= 2 (one pooled feature and the image tokens), got "
                             f"{self.pooler_queries}")
        if self.cls_mask not in CLS_MASKS:
            raise UsageError(f"cls_mask must be one of {list(CLS_MASKS)}, got {self.cls_mask!r}")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CoCaConfig":
        if not isinstance(d, dict):
            raise UsageError(f"config must be a mapping of CoCaConfig keys, got {type(d).__name__}")
        d = dict(d)
        if d.pop("family", COCA_FAMILY) != COCA_FAMILY:
            raise UsageError(f"config.family must be {COCA_FAMILY!r} for a CoCa config")
        own = {k: d.pop(k) for k in ("decoder", "pooler_queries", "pooler_heads", "cls_mask") if k in d}
        dec = own.get("decoder", {})
        if isinstance(dec, dict):
            valid = [f.name for f in dataclasses.fields(DecoderConfig)]
            unknown = sorted(set(dec) - set(valid))
            if unknown:
                raise UsageError(f"unknown config.decoder key(s) {unknown}; valid keys: {', '.join(valid)}")
            own["decoder"] = DecoderConfig(**dec)
        base = CLIPConfig.from_dict(d)
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(CLIPConfig)}, **own)

    def replace(self, **overrides) -> "CoCaConfig":
        """A copy with overrides; nested parts take dicts: `cfg.replace(decoder={"layers": 1})`."""
        d = self.to_dict()
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                d[k] = {**d[k], **v}
            elif dataclasses.is_dataclass(v):
                d[k] = dataclasses.asdict(v)
            else:
                d[k] = v
        return CoCaConfig.from_dict(d)


def _coca(embed_dim: int, image_size: int, patch: int, v_width: int, v_layers: int, v_heads: int, t_width: int,
          t_layers: int, t_heads: int, *, vocab: int = 49408, context: int = 76, pooler_heads: int = 8,
          d_heads: int = 8, **text) -> CoCaConfig:
    return CoCaConfig(
        embed_dim=embed_dim,
        vision=ViTConfig(image_size=image_size, patch_size=patch, width=v_width, layers=v_layers, heads=v_heads,
                         act="gelu", pool="cls"),
        text=TextConfig(vocab_size=vocab, context_length=context, width=t_width, layers=t_layers, heads=t_heads,
                        act="gelu", pool="last", **text),
        decoder=DecoderConfig(width=t_width, layers=t_layers, heads=d_heads),
        pooler_heads=pooler_heads,
    )


# The tiny CoCa (milliseconds on CPU): the tiny ViT trunk and text widths, 17 pooler queries (16 image tokens).
register_model("coca-tiny", dataclasses.replace(
    _coca(64, 32, 4, 64, 2, 2, 64, 2, 2, vocab=1024, context=32, pooler_heads=2, d_heads=2), pooler_queries=17))
register_model("coca_ViT-B-32", _coca(512, 224, 32, 768, 12, 12, 512, 12, 8))

