"""Model summaries without allocating weights (parameter counts on the meta device)."""
from __future__ import annotations

from typing import Dict, List

import torch

from clipforge.models.config import get_model_config, list_models
from clipforge.models.clip import CLIPModel
from clipforge.models.tokenizer import default_tokenizer


def count_parameters(name: str) -> Dict[str, int]:
    """Parameter counts of a registered config (total, vision, text) without allocating any memory."""
    cfg = get_model_config(name)
    with torch.device("meta"):
        model = CLIPModel(cfg, tokenizer=default_tokenizer(cfg.text.context_length))
    vis = sum(p.numel() for p in model.visual.parameters())
    txt = sum(p.numel() for p in model.text.parameters())
    return {"total": sum(p.numel() for p in model.parameters()), "vision": vis, "text": txt}


def describe_models() -> List[dict]:
    rows = []
    for name in list_models():
        cfg = get_model_config(name)
        counts = count_parameters(name)
        rows.append({
            "name": name, "parameters": counts["total"], "vision_parameters": counts["vision"],
            "text_parameters": counts["text"], "embed_dim": cfg.embed_dim, "image_size": cfg.vision.image_size,
            "patch_size": cfg.vision.patch_size, "context_length": cfg.text.context_length,
            "head": "sigmoid" if cfg.logit_bias_init is not None else "softmax",
        })
    return rows
