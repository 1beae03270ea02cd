"""Losses by name: `get_loss("clip")`, `list_losses()`, `@register_loss("name")`.

A loss is chosen by its name in the training config, never inferred from a model's name. Every registered
loss is an `nn.Module` whose forward is `loss(output: CLIPOutput, batch: dict | None) -> LossOutput`; its
options are its constructor's parameters.

What a loss needs beyond pooled embeddings and the logit scale it declares as `needs_<input>` attributes
(class attributes, or properties when an option decides), listed in `NEEDS`: the model's logit bias
(SigLIP), token-level features (FILIP), stored teacher embeddings (reinforced distillation), counterfactual
captions (counting), several captions per image (DreamLIP), each caption's first sentence (Long-CLIP).
`loss_needs(loss)` lists them; the trainer supplies each one and refuses, when the config is loaded, a loss
whose needs its pipeline cannot meet — never by checking a loss's name.

The built-in losses register themselves when `clipforge.losses` is imported (its `__init__` imports them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from clipforge.registry import Registry

__all__ = ["LossOutput", "LOSSES", "NEEDS", "register_loss", "list_losses", "get_loss", "loss_needs"]

# needs_<key> attribute -> what it asks for, in words (error messages and docs).
NEEDS = {
    "logit_bias": "a model with a logit bias",
    "token_features": "token-level features (image patch and text token embeddings)",
    "teacher_embeddings": "stored teacher embeddings",
    "counterfactual_captions": "counterfactual captions",
    "caption_lists": "several captions per image",
    "short_captions": "each caption's first sentence",
    "caption_logits": "a captioning model's caption logits (a CoCa)",
}


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


def loss_needs(loss) -> list[str]:
    """The `NEEDS` keys a loss (class or instance) declares, in `NEEDS` order."""
    return [k for k in NEEDS if getattr(loss, f"needs_{k}", False)]


def get_loss(name: str, **kwargs) -> nn.Module:
    """Build a registered loss. Unknown names and unknown keyword arguments raise UsageError."""
    return LOSSES.get(name)(**LOSSES.check(name, kwargs, ignore_none=False))
