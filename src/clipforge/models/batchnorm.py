"""BatchNorm in towers: a frozen BatchNorm runs in eval mode, and where BatchNorm still trains can be asked.

A BatchNorm layer in train mode normalises each batch by that batch's own statistics and moves its running
statistics (buffers, not parameters) towards them. For a frozen layer both are wrong: a locked tower (LiT) or
the frozen base under a LoRA adapter would drift to the training data's statistics although none of its
parameters train, and the drifted buffers are not what an adapter saves. So a BatchNorm whose parameters are
all frozen runs in eval mode whatever the model's mode (`keep_frozen_norms_eval`, applied by `CLIPModel.train`
and `EfficientNetTower.train`): it is then a fixed affine map, exactly what a reload of the saved weights
computes.

`train_mode_batchnorms(module)` names the BatchNorm layers that still normalise by batch statistics: what
makes gradient caching inexact (sub-batch statistics differ from the full batch's) and what DDP synchronises.
"""
from __future__ import annotations

from torch import nn

__all__ = ["is_frozen_norm", "keep_frozen_norms_eval", "train_mode_batchnorms"]


def is_frozen_norm(m: nn.Module) -> bool:
    """A BatchNorm layer with learnable parameters, none of which trains."""
    if not isinstance(m, nn.modules.batchnorm._BatchNorm):
        return False
    params = list(m.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def keep_frozen_norms_eval(module: nn.Module) -> nn.Module:
    """Put every frozen BatchNorm layer of `module` in eval mode (call after `module.train(True)`)."""
    if module.training:
        for m in module.modules():
            if is_frozen_norm(m):
                m.eval()
    return module


def train_mode_batchnorms(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers of `module` in train mode that use batch statistics."""
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            and (m.track_running_stats or m.running_mean is None)]
