"""Losses by name: `get_loss("clip")`, `list_losses()`, `@register_loss("name")`.

A loss is chosen by its name in the training config, never inferred from a model's name. Every registered
loss is an `nn.Module` whose forward is `loss(output: CLIPOutput, batch: dict | None) -> LossOutput`; its
options are its constructor's parameters. A loss that uses the model's logit bias (SigLIP) says so with
`needs_logit_bias = True`, so the trainer can refuse a model without one before the first step.

The built-in losses register themselves when `clipforge.losses` is imported (its `__init__` imports them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from clipforge.registry import Registry

__all__ = ["LossOutput", "LOSSES", "register_loss", "list_losses", "get_loss"]


@dataclass
class LossOutput:
    """total: the scalar to backpropagate. parts: named (detached) components, for logging."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


LOSSES = Registry("loss", param="loss.name", plural="losses")


def register_loss(name: str):
    """Class decorator: make `get_loss(name, **kwargs)` build this loss (sets `cls.registered_name`)."""
    register = LOSSES.register(name)

    def deco(cls):
        cls = register(cls)
        cls.registered_name = name
        return cls

    return deco


def list_losses() -> list[str]:
    return LOSSES.names()


def get_loss(name: str, **kwargs) -> nn.Module:
    """Build a registered loss. Unknown names and unknown keyword arguments raise UsageError."""
    return LOSSES.get(name)(**LOSSES.check(name, kwargs, ignore_none=False))
