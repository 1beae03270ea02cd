"""`unwrap_model`: the one way to reach the model inside a DistributedDataParallel wrapper."""
from __future__ import annotations

from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or any `.module` wrapper); the model itself otherwise."""
    return getattr(model, "module", model)
