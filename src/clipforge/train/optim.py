"""AdamW with parameter groups (no weight decay on gains, biases, embeddings, temperature) and tower locking."""
from __future__ import annotations

import logging
from typing import List

import torch
from torch import nn

from clipforge.errors import UsageError
from clipforge.models.batchnorm import keep_frozen_norms_eval
from clipforge.models.projection import is_pretrained_tower
from clipforge.models.resnet import ResNetTower
from clipforge.models.unwrap import unwrap_model

log = logging.getLogger(__name__)


def lock_tower(tower: nn.Module, unlocked_groups: int = 0) -> None:
    """Freeze a tower (LiT). `unlocked_groups` > 0 keeps its last N blocks (a ResNet tower's last N stages) and
    everything after the blocks (final norm, pooling head, projection; a ResNet's attention pool) trainable.
    Frozen BatchNorm layers run in eval mode (models/batchnorm.py): their statistics stay the saved ones.

    A pretrained tower with a projection head (EfficientNet, Hugging Face text: `tower.feature_dim`) locks
    its encoder only: the head always trains, as in projector alignment (LiT with a new head)."""
    pretrained = is_pretrained_tower(tower)
    if hasattr(tower, "after_blocks"):  # the tower names its blocks (pretrained towers, ResNet stages)
        blocks, after = tower.blocks, list(tower.after_blocks())
    else:
        blocks, after = tower.transformer.blocks, [getattr(tower, n, None) for n in
                                                   ("ln_post", "ln_final", "head", "proj")]
    if unlocked_groups > len(blocks):
        unit = "stages" if isinstance(tower, ResNetTower) else "blocks"
        raise UsageError(f"cannot unlock {unlocked_groups} groups: the tower has {len(blocks)} {unit}")
    for p in tower.parameters():
        p.requires_grad_(False)
    trainable = [tower.head] if pretrained else []
    if unlocked_groups > 0:
        trainable += list(blocks[len(blocks) - unlocked_groups:]) + [m for m in after if m is not None]
    for mod in trainable:
        for p in mod.parameters():
            p.requires_grad_(True)
    keep_frozen_norms_eval(tower)


def tower_is_frozen(tower: nn.Module) -> bool:
    """True when nothing but a pretrained tower's projection head trains (its features can be cached)."""
    head = tower.head if is_pretrained_tower(tower) else None
    own = {id(p) for p in head.parameters()} if head is not None else set()
    return not any(p.requires_grad for p in tower.parameters() if id(p) not in own)


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    core = unwrap_model(model)
    no_decay = core.no_weight_decay()
    decay, skip = [], []
    for name, p in core.named_parameters():
        if not p.requires_grad:
            continue
        (skip if name in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    n_train = sum(p.numel() for g in groups for p in g["params"])
    if n_train == 0:
        raise UsageError("no trainable parameters (are both towers locked?)")
    log.info("optimizer: AdamW over %s trainable parameters (%d decayed tensors, %d not decayed)",
             f"{n_train:,}", len(groups[0]["params"]), len(groups[1]["params"]))
    # The fused kernel updates every tensor in one pass (CPU and CUDA); PyTorch's CPU default is a Python loop
    # over tensors, 6x slower for the tiny model (bench/bench_train_step.py).
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=True)
