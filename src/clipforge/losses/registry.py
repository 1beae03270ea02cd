"""Losses by name: `get_loss("clip")`, `list_losses()`, `@register_loss("name")`.

A loss is chosen by its name in the training config, never inferred from a model's name. Every registered
loss is an `nn.Module` whose forward is `loss(output: CLIPOutput, batch: dict | None) -> LossOutput`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from clipforge.errors import UsageError


@dataclass
class LossOutput:
    """total: the scalar to backpropagate. parts: named (detached) components, for logging."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str):
    """Class decorator: make `get_loss(name, **kwargs)` build this loss."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise UsageError(f"loss {name!r} is already registered (by {_REGISTRY[name].__name__})")
        _REGISTRY[name] = cls
        cls.registered_name = name
        return cls

    return deco


def _load_builtin() -> None:
    # Importing the modules runs their @register_loss decorators.
    from clipforge.losses import align, clip, counting, cwcl, distill, filip, siglip  # noqa: F401


def list_losses() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_loss(name: str, **kwargs) -> nn.Module:
    """Build a registered loss. Unknown names and unknown keyword arguments raise UsageError."""
    _load_builtin()
    if name not in _REGISTRY:
        raise UsageError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    params = inspect.signature(cls).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise UsageError(f"unknown option(s) {unknown} for loss {name!r}; valid options: "
                         f"{', '.join(params) or '(none)'}")
    return cls(**kwargs)
