"""Synchronised BatchNorm for DDP, on gloo (CPU) as on NCCL: the statistics of the global batch on every rank.

Under DDP each rank holds B/W samples. A BatchNorm layer in train mode would normalise by its own rank's
statistics, so W processes compute a different function than one process on the whole batch (tiny-resnet:
loss 4.8774 vs 4.8671 after 3 steps). Here the per-channel sum and sum of squared deviations are all-reduced,
so every rank normalises by the statistics of all B samples and updates its running statistics with them
(unbiased variance over B, as `nn.BatchNorm2d` does) — one process's result, to float rounding.

`torch.nn.SyncBatchNorm` would do this, but refuses CPU tensors ("expected input tensor to be on GPU", torch
2.13), so the gloo runs this project trains and tests on could not use it. The gradient follows the same
contract as the losses' collectives (losses/distributed.py): the backward of an all-reduced sum is the
all-reduced sum of its gradients, and DDP's averaging over ranks then gives one process's gradient.

    n = convert_sync_batchnorm(model)   # before wrapping in DDP: its train-mode BatchNorm2d layers, in place

Eval mode, a frozen layer (models/batchnorm.py) and a single process use plain BatchNorm: nothing is exchanged.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from clipforge.losses.distributed import is_distributed

__all__ = ["SyncBatchNorm2d", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient reaching it is summed over ranks too (every rank's output used every input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


class SyncBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose train-mode statistics span every rank's batch (same parameters, buffers, keys)."""

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "SyncBatchNorm2d":
        """A layer sharing `bn`'s parameters and buffers (its state-dict keys and optimizer entries are unchanged)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name in ("weight", "bias"):
            setattr(new, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(bn, name))
        return new.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # half precision: statistics in float32
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        local = xf.new_tensor([x.numel() // x.shape[1]])
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dims), local]))  # (C + 1,): channel sums, global count
        count = sums[-1].detach()
        mean = sums[:-1] / count                                            # (C,)
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count  # (C,) biased, as normalisation uses
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.to(xf.dtype).view(shape) + self.bias.to(xf.dtype).view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module) -> int:
    """Replace every `nn.BatchNorm2d` of `model` in train mode by a `SyncBatchNorm2d` sharing its tensors, in
    place; returns how many. Layers in eval mode (frozen ones) are left as they are."""
    targets = [name for name, m in model.named_modules()
               if type(m) is nn.BatchNorm2d and m.training and m.track_running_stats]
    for name in targets:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, SyncBatchNorm2d.from_batchnorm(getattr(owner, leaf)))
    return len(targets)
