"""The one parameter counter: the towers a config describes, built on the meta device (shapes only, nothing
allocated; ViT-L/14 takes ~20 ms), so the count is exact for every architecture by construction.

A Hugging Face text tower whose encoder config is not read yet (`text.hf` without `text.hf_config`) counts as
its projection head alone: the encoder's size is known once `pretrained_config.resolve_config` reads it.
Counts are cached per config. A config whose tensors could not even be sized (a product over 2^63) counts
as None: config validation refuses it like any model over the limit.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import torch
from torch import nn

from clipforge.models.coca_decoder import CaptionDecoder
from clipforge.models.coca_towers import CoCaTextTower, CoCaVisionTower
from clipforge.models.projection import projection_head
from clipforge.models.towers import text_tower, vision_tower

__all__ = ["parameter_counts", "count_parameters"]


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(cfg) -> Optional[dict[str, int]]:
    """{"total", "vision", "text"} parameters of the model a `CLIPConfig` describes (total adds the logit scale
    and bias), or None when its sizes overflow."""
    key = json.dumps([cfg.embed_dim, cfg.logit_bias_init is not None, dataclasses.asdict(cfg.vision),
                      dataclasses.asdict(cfg.text), _coca_key(cfg)], sort_keys=True, default=str)
    if key not in _CACHE:
        if len(_CACHE) >= 256:
            _CACHE.clear()
        _CACHE[key] = _build_counts(cfg)
    counts = _CACHE[key]
    return None if counts is None else dict(counts)


def count_parameters(cfg) -> Optional[int]:
    """Total parameters of the model a `CLIPConfig` describes (None: too large to size)."""
    counts = parameter_counts(cfg)
    return None if counts is None else counts["total"]


_CACHE: dict[str, Optional[dict[str, int]]] = {}


def _coca_key(cfg):
    """What a CoCa config (`coca_config.CoCaConfig`) adds to the towers' sizes, or None for a CLIP."""
    dec = getattr(cfg, "decoder", None)
    return None if dec is None else [dataclasses.asdict(dec), cfg.pooler_queries, cfg.pooler_heads]


def _coca_counts(cfg) -> tuple[int, int]:
    """(vision, text) parameters of a CoCa: the pooled image tower, the text tower and caption decoder."""
    d, t = cfg.embed_dim, cfg.text
    vision = _numel(CoCaVisionTower(cfg.vision, d, cfg.pooler_queries, cfg.pooler_heads))
    return vision, _numel(CoCaTextTower(t, d)) + _numel(CaptionDecoder(cfg.decoder, t.vocab_size))


def _build_counts(cfg) -> Optional[dict[str, int]]:
    t, d = cfg.text, cfg.embed_dim
    try:
        with torch.device("meta"):
            vision = _numel(vision_tower(cfg.vision, d))
            if _coca_key(cfg) is not None:
                vision, text = _coca_counts(cfg)
            elif t.hf is not None and t.hf_config is None:
                text = _numel(projection_head(t.head, t.width, d, t.head_hidden))
            else:
                text = _numel(text_tower(t, d))
    except RuntimeError as e:  # "Storage size calculation overflowed": no tensor of these sizes can exist
        if "overflow" in str(e):
            return None
        raise
    return {"total": vision + text + 1 + (1 if cfg.logit_bias_init is not None else 0),
            "vision": vision, "text": text}
