"""Which model class builds a config: `CoCaModel` for a `CoCaConfig`, `CLIPModel` for every other."""
from __future__ import annotations

from clipforge.models.clip import CLIPModel
from clipforge.models.coca import CoCaModel
from clipforge.models.coca_config import CoCaConfig

__all__ = ["model_class", "can_caption"]


def model_class(cfg) -> type:
    return CoCaModel if isinstance(cfg, CoCaConfig) else CLIPModel


def can_caption(model) -> bool:
    """Whether `model` (unwrapped) has a caption decoder."""
    return bool(getattr(model, "can_caption", False))
