"""Model summaries without allocating weights (parameter counts from `param_count`, on the meta device)."""
from __future__ import annotations

from typing import Dict, List

from clipforge.models.model_registry import get_model_config, list_models
from clipforge.models.param_count import parameter_counts
from clipforge.models.pretrained_config import resolve_config


def count_parameters(name: str) -> Dict[str, int]:
    """Parameter counts of a registered config (total, vision, text) without allocating any memory; a Hugging
    Face text tower counts its encoder (its config is read, as building the model does)."""
    return parameter_counts(resolve_config(get_model_config(name)))


def describe_models() -> List[dict]:
    rows = []
    for name in list_models():
        cfg = get_model_config(name)
        counts = count_parameters(name)
        rows.append({
            "name": name, "parameters": counts["total"], "vision_parameters": counts["vision"],
            "text_parameters": counts["text"], "embed_dim": cfg.embed_dim, "image_size": cfg.vision.image_size,
            "patch_size": getattr(cfg.vision, "patch_size", None), "context_length": cfg.text.context_length,
            "head": "sigmoid" if cfg.logit_bias_init is not None else "softmax",
        })
    return rows
