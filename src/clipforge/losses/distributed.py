"""Collectives that keep the gradient, for losses computed across processes.

The contract every distributed loss here follows: each rank computes only its *local* rows against the
*global* columns and normalises by its local batch size. DDP then averages parameter gradients over the W
ranks, and the result is exactly the gradient of one process holding the whole batch:

    (1/W) * sum_r d/dθ [ (1/B_r) sum_{i in r} loss_i ]  ==  d/dθ [ (1/N) sum_i loss_i ]      (B_r = N/W)

For that, gradients reaching a gathered tensor must flow back to the rank that owns each slice: the
backward of an all-gather is a sum over ranks of the incoming gradient, of which each rank keeps its own
slice. Plain `dist.all_gather` drops gradients; these functions keep them. They work on gloo (CPU) and
NCCL (GPU); gloo has no reduce-scatter, so the backward uses an all-reduce and slices.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group exists and spans more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world(group=None) -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def gather_sizes(n: int, device, group) -> list[int]:
    """Local batch size of every rank, in rank order (ranks may hold uneven batches)."""
    world = dist.get_world_size(group)
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s.item()) for s in sizes]


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's (B_r, D) tensor into (N, D); backward returns this rank's slice of the
    gradient summed over all ranks (each rank's loss touched every slice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list, group) -> torch.Tensor:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        biggest = max(sizes)
        # Collectives need equal shapes: pad to the largest local batch, strip afterwards.
        padded = x.new_zeros((biggest,) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, rank
        return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(x: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """(B_r, ...) per rank -> ((sum_r B_r, ...) in rank order, differentiable; offset of this rank's first
    row in it, which locates the positive pairs). Identity (x, 0) when not distributed."""
    if not is_distributed():
        return x, 0
    sizes = gather_sizes(x.shape[0], x.device, group)
    offset = sum(sizes[: dist.get_rank(group)])
    return _AllGatherWithGrad.apply(x, sizes, group), offset


def _exchange(x: torch.Tensor, send_to: int, recv_from: int, group) -> torch.Tensor:
    """Send x to one rank and receive an equally shaped tensor from another (both at once, no deadlock)."""
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), _global(send_to, group), group),
           dist.P2POp(dist.irecv, out, _global(recv_from, group), group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


def _global(rank_in_group: int, group) -> int:
    return rank_in_group if group is None else dist.get_global_rank(group, rank_in_group)


class _RingShift(torch.autograd.Function):
    """One step of a ring: send to rank+1, receive from rank-1. Backward sends the gradient the other way,
    so it reaches the rank that produced the features."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        ctx.group, ctx.rank, ctx.world = group, rank, world
        return _exchange(x, (rank + 1) % world, (rank - 1) % world, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        r, w = ctx.rank, ctx.world
        return _exchange(grad, (r - 1) % w, (r + 1) % w, ctx.group), None


def ring_shift(x: torch.Tensor, group=None) -> torch.Tensor:
    """Differentiable ring step: returns the tensor held by rank-1. All ranks must pass the same shape."""
    if not is_distributed():
        return x
    return _RingShift.apply(x, group)


def allreduce_grads_(params, group=None, average: bool = True) -> None:
    """Average (or sum) .grad of `params` over ranks in place: what DDP does, for callers that compute
    gradients outside a DDP forward (gradient caching on the bare module)."""
    if not is_distributed():
        return
    world = dist.get_world_size(group)
    for p in params:
        if p.grad is None:
            continue
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
        if average:
            p.grad.div_(world)


def all_reduce_mean(x: Optional[torch.Tensor], group=None) -> Optional[torch.Tensor]:
    """Mean of a (detached) tensor over ranks, for logging the global loss."""
    if x is None or not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
    return y / dist.get_world_size(group)
