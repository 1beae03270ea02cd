"""clipforge: one toolkit for contrastive image-text (CLIP-style) models.

Train or fine-tune a model on your own image-text pairs, classify images with no or few labels, evaluate
with the field's standard metrics, and index a collection to search it by text or image.

    >>> import clipforge
    >>> model = clipforge.create_model("tiny")
    >>> tok = model.tokenizer
"""
from __future__ import annotations

__version__ = "0.1.0"

from clipforge.errors import ClipforgeError, UsageError  # noqa: F401


def __getattr__(name):  # lazy: importing clipforge must not import torch-heavy modules eagerly
    if name in {"create_model", "list_models", "load_model", "get_model_config", "register_model"}:
        from clipforge import models

        return getattr(models, name)
    if name in {"CLIPModel", "CLIPOutput"}:
        from clipforge import models

        return getattr(models, name)
    raise AttributeError(f"module 'clipforge' has no attribute {name!r}")
