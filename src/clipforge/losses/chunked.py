"""Reductions over the (M, N) logit matrix s·A·Bᵀ (+ b) that never hold it whole.

A contrastive loss over a global batch of N needs, per row and per column, a cross-entropy (softmax losses)
or a sum of softplus (sigmoid losses) over all N partners. Autograd on `a @ b.T` would keep the whole
N×N matrix (and its softmax) for the backward: 4 GB per float32 copy at N = 32k. These autograd Functions
walk over row blocks of `chunk` rows in the forward AND recompute each block in the backward, so peak
extra memory is O(chunk · N) both ways, and the results equal the dense computation to rounding.

Gradients, with S = s·A·Bᵀ (block of rows A_blk) and G = dLoss/dS for that block:
    dA_blk = s·G·B,   dB += s·Gᵀ·A_blk,   ds += Σ G ⊙ (A_blk·Bᵀ),   db += Σ G
  cross-entropy of rows (grad g_r) and columns (grad g_c):   G = g_r[:,None]·(softmax_row − I) + g_c[None,:]·(softmax_col − I)
  softplus sum (grad g):                                      G = g·sigmoid(S + b)   (−sigmoid(−S − b) on positives)

Precision: both work in a form that stays accurate near zero loss, where a float32 loss matters most (a
trained model's batches): the positive logit is subtracted inside the exponentials (CE) or its term is
softplus(−z) rather than softplus(z) − z (sigmoid). What float32 cannot avoid is the rounding of each block
product (≈ s·2⁻²⁴ per logit: 1–7e-6 relative near zero loss at s = 100), so `dot_precision="float64"` runs
the blocks in float64 (inputs upcast once, gradients cast back): ≤ 1e-6 there, at a cost that is small
against a training step (the loss is O(N²·D), the towers O(N·GFLOPs)). "auto" picks float64 on CPUs and on
GPUs with full-rate float64, float32 elsewhere. docs/fidelity.md has the measured errors and costs.
"""
from __future__ import annotations

from typing import Optional

import torch

from clipforge.errors import UsageError

DOT_PRECISIONS = ("auto", "float32", "float64")
# CUDA compute capabilities whose float64 runs at half the float32 rate (data-centre parts: P100, V100, A100,
# H100/H200, B200); every other GPU has 1/32–1/64-rate float64, where float64 blocks would dominate a step.
_FAST_FP64_CAPABILITIES = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}


def resolve_dot_precision(precision: str, device) -> torch.dtype:
    """The working dtype of the block products: float64 or float32 ("auto": float64 on a CPU or a GPU with
    full-rate float64, as the device reports it; float32 elsewhere)."""
    if precision not in DOT_PRECISIONS:
        raise UsageError(f"`dot_precision` must be one of {', '.join(DOT_PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return torch.float64 if precision == "float64" else torch.float32
    device = torch.device(device)
    if device.type == "cpu":
        return torch.float64
    if device.type == "cuda":
        return torch.float64 if torch.cuda.get_device_capability(device) in _FAST_FP64_CAPABILITIES \
            else torch.float32
    return torch.float32   # mps and others: no (fast) float64


def _prepare(a, b, scale, precision: str = "float32"):
    """Run the blocks in at least float32 (an lse over 32k bf16 logits is too coarse; float64 with
    `precision`) and outside autocast, which would otherwise turn the block matmuls back into bf16."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), resolve_dot_precision(precision, a.device))
    scale = torch.as_tensor(scale, device=a.device).to(dtype)
    return a.to(dtype), b.to(dtype), scale, torch.autocast(a.device.type, enabled=False)


def _blocks(m: int, chunk: int):
    for start in range(0, m, chunk):
        yield start, min(start + chunk, m)


def _lse_above(d: torch.Tensor, dim: int):
    """log Σ exp(d) along `dim` as m + log1p(Σ_{j≠argmax} exp(d_j − m)): the largest term (1 after the shift)
    is kept out of the sum, so a result near 0 keeps its relative precision. Returns (m, rest) with the
    result m + log1p(rest); both squeezed along `dim`."""
    m, idx = d.max(dim, keepdim=True)
    e = (d - m).exp_().scatter_(dim, idx, 0.0)
    return m.squeeze(dim), e.sum(dim)


def _positive_dots(a: torch.Tensor, b_pos: torch.Tensor):
    """The positive pairs' dot products a_i·b_i (M,) to twice the working precision, as hi + lo in a's dtype:
    a rounding shared by a whole row would not average out over the row's terms (O(M·D), negligible)."""
    wide = torch.float64 if a.dtype != torch.float64 else a.dtype
    exact = (a.to(wide) * b_pos.to(wide)).sum(-1)
    hi = exact.to(a.dtype)
    return hi, (exact - hi).to(a.dtype)


def _minus_positive(dots: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """s·(dots − (hi + lo)): the logits minus their positive, each entry rounded on its own. (new tensor)"""
    return (dots - hi).sub_(lo).mul_(scale)


class _BlockCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy of each row of S = s·A·Bᵀ against its positive S[i, offset+i] (and, for a square
    batch, of each column against S[j, j]), in the stable form CE_i = log Σ_j exp(S_ij − S_i,pos): the
    positive is subtracted before the exponentials, never from a separately rounded log-sum-exp, so a loss
    near zero keeps its relative precision; the backward writes p_ii − 1 as expm1(−CE_i) for the same reason."""

    @staticmethod
    def forward(ctx, a, b, scale, chunk: int, offset: int, want_cols: bool):
        m, n = a.shape[0], b.shape[0]
        hi, lo = _positive_dots(a, b[offset:offset + m])                 # (M,) each: positive dots, hi + lo
        row_ce = a.new_empty(m)                                          # (M,)
        col_max = a.new_full((n,), float("-inf"))                        # (N,) running column max of S − S_jj
        col_rest = a.new_zeros(n)                                        # (N,) Σ exp(· − max), max term left out
        for s0, s1 in _blocks(m, chunk):
            r = torch.arange(s1 - s0, device=a.device)
            dots = torch.mm(a[s0:s1], b.t())                             # (c, N), freed after this block
            d = _minus_positive(dots, hi[s0:s1, None], lo[s0:s1, None], scale)
            d[r, offset + s0 + r] = 0.0                                  # exactly: the positive minus itself
            top, rest = _lse_above(d, 1)
            row_ce[s0:s1] = top + torch.log1p(rest)
            if want_cols:  # square batch (offset 0): column j's positive is S_jj
                d = _minus_positive(dots, hi[None, :], lo[None, :], scale)
                d[r, s0 + r] = 0.0
                top, rest = _lse_above(d, 0)
                new_max = torch.maximum(col_max, top)
                col_rest = torch.where(col_max >= top, col_rest + (top - col_max).exp() * (1 + rest),
                                       rest + (col_max - top).exp() * (1 + col_rest))
                col_max = new_max
        col_ce = col_max + torch.log1p(col_rest) if want_cols else a.new_empty(0)
        ctx.save_for_backward(a, b, scale, hi, lo, row_ce, col_ce)
        ctx.chunk, ctx.offset, ctx.want_cols = chunk, offset, want_cols
        if not want_cols:
            ctx.mark_non_differentiable(col_ce)
        return row_ce, col_ce

    @staticmethod
    def backward(ctx, g_row, g_col):
        a, b, scale, hi, lo, row_ce, col_ce = ctx.saved_tensors
        need_a, need_b, need_s = ctx.needs_input_grad[:3]
        offset = ctx.offset
        # dCE_i/dS_ij = p_ij − [j = pos(i)], p = softmax of the row (column). Accumulate G·B and Gᵀ·A unscaled
        # (in-place addmm, no (N, D) temporaries); scale once at the end.
        da = torch.zeros_like(a) if need_a else None
        db = torch.zeros_like(b) if need_b else None
        ds = torch.zeros((), dtype=a.dtype, device=a.device)
        for s0, s1 in _blocks(a.shape[0], ctx.chunk):
            r = torch.arange(s1 - s0, device=a.device)
            dots = torch.mm(a[s0:s1], b.t())                             # (c, N)
            grad = _minus_positive(dots, hi[s0:s1, None], lo[s0:s1, None], scale)
            grad = grad.sub_(row_ce[s0:s1, None]).exp_().mul_(g_row[s0:s1, None])
            grad[r, offset + s0 + r] = torch.expm1(-row_ce[s0:s1]) * g_row[s0:s1]
            if ctx.want_cols:
                gc = _minus_positive(dots, hi[None, :], lo[None, :], scale)
                gc = gc.sub_(col_ce[None, :]).exp_().mul_(g_col[None, :])
                gc[r, s0 + r] = torch.expm1(-col_ce[s0:s1]) * g_col[s0:s1]
                grad.add_(gc)
                del gc
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
        return da, db, (ds.reshape(scale.shape) if need_s else None), None, None, None


def block_cross_entropy(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, chunk: int, offset: int = 0,
                        want_cols: bool = True, dot_precision: str = "auto"
                        ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-row (and per-column) softmax cross-entropy of s·a·bᵀ without materialising it.

    a: (M, D), b: (N, D), scale: scalar tensor; row i's positive is column `offset + i`. Returns row_ce (M,)
    = lse_j(S_ij) − S_i,offset+i and, when `want_cols` (square batch, offset 0), col_ce (N,) = lse_i(S_ij) −
    S_jj; else None; in the working dtype (float64 with `dot_precision` "float64"). Differentiable in a, b
    and scale.
    """
    if want_cols and (a.shape[0] != b.shape[0] or offset):
        raise ValueError("column cross-entropy needs a square batch with offset 0")
    out_dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b, scale, no_autocast = _prepare(a, b, scale, dot_precision)
    with no_autocast:
        row, col = _BlockCrossEntropy.apply(a, b, scale, int(chunk), int(offset), bool(want_cols))
    return row.to(out_dtype), (col.to(out_dtype) if want_cols else None)


class _BlockSoftplusSum(torch.autograd.Function):
    """Σ_ij softplus(±(S_ij + b)): "−" on the positives (i, offset + i) when `offset` >= 0, "+" elsewhere —
    i.e. Σ −log σ(z_ij (S_ij + b)) directly, never softplus(x) − x for a positive (which loses every digit
    when x is large, the trained regime). softplus(u) = −logsigmoid(−u): no threshold, exact gradients."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, chunk: int, offset: int):
        total = a.new_zeros(())
        for s0, s1 in _blocks(a.shape[0], chunk):
            z = torch.mm(a[s0:s1], b.t()).mul_(scale).add_(bias)   # (c, N)
            if offset >= 0:
                r = torch.arange(s1 - s0, device=a.device)
                z[r, offset + s0 + r] *= -1
            total -= torch.nn.functional.logsigmoid(z.neg_()).sum()
        ctx.save_for_backward(a, b, scale, bias)
        ctx.chunk, ctx.offset = chunk, offset
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
            z = (dots * scale).add_(bias)
            if ctx.offset >= 0:  # d softplus(−x)/dx = −sigmoid(−x)
                r = torch.arange(s1 - s0, device=a.device)
                z[r, ctx.offset + s0 + r] *= -1
                grad = z.sigmoid_().mul_(g)
                grad[r, ctx.offset + s0 + r] *= -1
            else:  # d softplus(x)/dx = sigmoid(x)
                grad = z.sigmoid_().mul_(g)
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
                dbias.reshape(bias.shape) if need_bias else None, None, None)


def block_softplus_sum(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                       bias: Optional[torch.Tensor], chunk: int, offset: Optional[int] = None,
                       dot_precision: str = "auto") -> torch.Tensor:
    """Σ_ij −log σ(z_ij (s·a_i·b_j + bias)) over the (M, N) pairs, in row blocks of `chunk`; scalar.
    z = +1 for the positives (i, offset + i) when `offset` is given, −1 everywhere else."""
    out_dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b, scale, no_autocast = _prepare(a, b, scale, dot_precision)
    bias = a.new_zeros(()) if bias is None else torch.as_tensor(bias, device=a.device).to(a.dtype)
    with no_autocast:
        total = _BlockSoftplusSum.apply(a, b, scale, bias, int(chunk), -1 if offset is None else int(offset))
    return total.to(out_dtype)
