"""Reductions over the (M, N) logit matrix s·A·Bᵀ (+ b) that never hold it whole.

A contrastive loss over a global batch of N needs, per row and per column, a log-sum-exp (softmax losses)
or a sum of softplus (sigmoid losses) over all N partners. Autograd on `a @ b.T` would keep the whole
N×N matrix (and its softmax) for the backward: 4 GB per float32 copy at N = 32k. These autograd Functions
walk over row blocks of `chunk` rows in the forward AND recompute each block in the backward, so peak
extra memory is O(chunk · N) both ways, and the results equal the dense computation to rounding.

Gradients, with S = s·A·Bᵀ (block of rows A_blk) and G = dLoss/dS for that block:
    dA_blk = s·G·B,   dB += s·Gᵀ·A_blk,   ds += Σ G ⊙ (A_blk·Bᵀ),   db += Σ G
  log-sum-exp over rows (grad g_r) and columns (grad g_c):  G = g_r[:,None]·softmax_row + g_c[None,:]·softmax_col
  softplus sum (grad g):                                     G = g·sigmoid(S + b)
"""
from __future__ import annotations

from typing import Optional

import torch


def _prepare(a, b, scale):
    """Run the blocks in at least float32 (an lse over 32k bf16 logits is too coarse) and outside autocast,
    which would otherwise turn the block matmuls back into bf16."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    scale = torch.as_tensor(scale, device=a.device).to(dtype)
    return a.to(dtype), b.to(dtype), scale, torch.autocast(a.device.type, enabled=False)


def _blocks(m: int, chunk: int):
    for start in range(0, m, chunk):
        yield start, min(start + chunk, m)


class _BlockLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, chunk: int, want_cols: bool):
        m, n = a.shape[0], b.shape[0]
        row_lse = a.new_empty(m)                                   # (M,)
        col_lse = a.new_full((n,), float("-inf")) if want_cols else a.new_empty(0)   # (N,)
        for s0, s1 in _blocks(m, chunk):
            logits = torch.mm(a[s0:s1], b.t()).mul_(scale)        # (c, N), freed after this block
            row_lse[s0:s1] = torch.logsumexp(logits, dim=1)
            if want_cols:
                # Online column reduction: combine this block's lse with the running one.
                col_lse = torch.logaddexp(col_lse, torch.logsumexp(logits, dim=0))
        ctx.save_for_backward(a, b, scale, row_lse, col_lse)
        ctx.chunk, ctx.want_cols = chunk, want_cols
        if not want_cols:
            ctx.mark_non_differentiable(col_lse)
        return row_lse, col_lse

    @staticmethod
    def backward(ctx, g_row, g_col):
        a, b, scale, row_lse, col_lse = ctx.saved_tensors
        need_a, need_b, need_s = ctx.needs_input_grad[:3]
        # Accumulate G·B and Gᵀ·A unscaled (in-place addmm, no (N, D) temporaries); scale once at the end.
        da = torch.zeros_like(a) if need_a else None
        db = torch.zeros_like(b) if need_b else None
        ds = torch.zeros((), dtype=a.dtype, device=a.device)
        for s0, s1 in _blocks(a.shape[0], ctx.chunk):
            dots = torch.mm(a[s0:s1], b.t())                        # (c, N)
            logits = dots * scale
            # In-place chain: at most three (c, N) buffers alive (dots, logits, grad).
            grad = (logits - row_lse[s0:s1, None]).exp_().mul_(g_row[s0:s1, None])
            if ctx.want_cols:
                grad.add_(logits.sub_(col_lse[None, :]).exp_().mul_(g_col[None, :]))
            del logits
            if need_s:
                ds += torch.dot(grad.flatten(), dots.flatten())
            del dots
            if need_a:
                torch.mm(grad, b, out=da[s0:s1])
            if need_b:
                db.addmm_(grad.t(), a[s0:s1])
        if need_a:
            da.mul_(scale)
        if need_b:
            db.mul_(scale)
        return da, db, (ds.reshape(scale.shape) if need_s else None), None, None


def block_logsumexp(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, chunk: int,
                    want_cols: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Row and column log-sum-exp of s·a·bᵀ without materialising it.

    a: (M, D), b: (N, D), scale: scalar tensor. Returns row_lse (M,) and col_lse (N,) (None unless
    want_cols). Differentiable in a, b and scale.
    """
    a, b, scale, no_autocast = _prepare(a, b, scale)
    with no_autocast:
        row, col = _BlockLogSumExp.apply(a, b, scale, int(chunk), bool(want_cols))
    return row, (col if want_cols else None)


class _BlockSoftplusSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, bias, chunk: int):
        total = a.new_zeros(())
        for s0, s1 in _blocks(a.shape[0], chunk):
            z = torch.mm(a[s0:s1], b.t()).mul_(scale).add_(bias)   # (c, N)
            total += torch.nn.functional.softplus(z).sum()
        ctx.save_for_backward(a, b, scale, bias)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, g):
        a, b, scale, bias = ctx.saved_tensors
        need_a, need_b, need_s, need_bias = ctx.needs_input_grad[:4]
        da = torch.zeros_like(a) if need_a else None
        db = torch.zeros_like(b) if need_b else None
        ds = torch.zeros((), dtype=a.dtype, device=a.device)
        dbias = torch.zeros((), dtype=a.dtype, device=a.device)
        for s0, s1 in _blocks(a.shape[0], ctx.chunk):
            dots = torch.mm(a[s0:s1], b.t())                        # (c, N)
            grad = (dots * scale).add_(bias).sigmoid_().mul_(g)     # d softplus(x)/dx = sigmoid(x)
            if need_s:
                ds += torch.dot(grad.flatten(), dots.flatten())
            del dots
            if need_bias:
                dbias += grad.sum()
            if need_a:
                torch.mm(grad, b, out=da[s0:s1])
            if need_b:
                db.addmm_(grad.t(), a[s0:s1])
        if need_a:
            da.mul_(scale)
        if need_b:
            db.mul_(scale)
        return (da, db, ds.reshape(scale.shape) if need_s else None,
                dbias.reshape(bias.shape) if need_bias else None, None)


def block_softplus_sum(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                       bias: Optional[torch.Tensor], chunk: int) -> torch.Tensor:
    """Σ_ij softplus(s·a_i·b_j + bias) over the (M, N) pairs, in row blocks of `chunk`; scalar."""
    a, b, scale, no_autocast = _prepare(a, b, scale)
    bias = a.new_zeros(()) if bias is None else torch.as_tensor(bias, device=a.device).to(a.dtype)
    with no_autocast:
        return _BlockSoftplusSum.apply(a, b, scale, bias, int(chunk))
