"""One optimiser update of a training run: the step's learning rate, the forward pass under the run's
precision, backward (or gradient caching), clipping, the optimiser step and the logit-scale clamp."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch

from clipforge.encode.precision import cpu_has_native_bf16
from clipforge.losses import clamp_logit_scale_
from clipforge.losses.gradcache import gradcache_step
from clipforge.train.adamw_step import FastAdamW, fast_adamw_applies
from clipforge.train.config_sections import TrainConfig
from clipforge.train.projector_step import ProjectorStep
from clipforge.train.schedule import lr_at
from clipforge.train.step import forward_loss


def clip_grad_norm_(params: list, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm over all gradients, scaled by min(1, max_norm / (norm + 1e-6)))
    in four kernels; torch's version spends ~30 µs per call grouping tensors, a tenth of a cached step."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if len({(g.dtype, g.device) for g in grads}) > 1:  # mixed dtypes or devices: torch's grouping is needed
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_(max=1.0))
    return total


def train_precision(precision: str, device: torch.device, closed_form: bool) -> str:
    """`run.precision` made concrete. "auto": bf16 on a CUDA device that has it; on a CPU with native bf16
    (avx512_bf16 / AMX) only for a feature-cache run that takes the closed-form step (`closed_form`), whose
    time is the heads' matmuls (bf16 operands run those ~2x faster, docs/bench_feature_cache.md), while
    autocast was slower than fp32 on CPUs for whole towers (encode/precision.py) and for autograd on cached
    features; fp32 everywhere else (bf16 is emulated on AVX2-only CPUs)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and closed_form and cpu_has_native_bf16() else "fp32"


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Updater:
    """`update(batch, step)` trains `model` (DDP-wrapped or not; `core` is the model itself) on one batch."""

    def __init__(self, cfg: TrainConfig, model, core, loss_fn, opt, scaler, device, total: int,
                 closed_form: Optional[ProjectorStep] = None, precision: Optional[str] = None):
        self.cfg, self.model, self.core, self.loss_fn = cfg, model, core, loss_fn
        self.precision = precision or cfg.run.precision   # concrete (train_precision)
        self.opt, self.scaler, self.device, self.total = opt, scaler, device, total
        self.params = [p for p in core.parameters() if p.requires_grad]
        self.closed_form = closed_form  # cached-feature batches: gradients in closed form (projector_step.py)
        self.opt_step = FastAdamW(opt).step if scaler is None and fast_adamw_applies(opt) else opt.step

    def __call__(self, batch, step: int):
        """(the loss result, the learning rate used, the gradient norm before clipping or None)."""
        cfg, opt, scaler, device = self.cfg, self.opt, self.scaler, self.device
        lr = lr_at(step, base_lr=cfg.optim.lr, total_steps=self.total, warmup_steps=cfg.schedule.warmup_steps,
                   name=cfg.schedule.name, min_lr=cfg.schedule.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        closed = self.closed_form is not None and "image_features" in batch
        if closed:
            res = self.closed_form(batch)              # loss, and every trainable parameter's .grad
        else:
            res = self._forward_backward(batch)
        if scaler is not None:
            scaler.unscale_(opt)
        grad_norm = clip_grad_norm_(self.params, cfg.optim.grad_clip) if cfg.optim.grad_clip else None
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            self.opt_step()
        if not closed:  # the closed form assigns every gradient afresh: nothing accumulates
            opt.zero_grad(set_to_none=True)
        clamp_logit_scale_(self.core)
        return res, lr, grad_norm

    def _forward_backward(self, batch):
        cfg, scaler, device = self.cfg, self.scaler, self.device
        with _autocast(self.precision, device):
            if cfg.run.gradcache_sub_batch:
                pixels = batch["pixels"].to(device, non_blocking=True)
                tokens = batch["tokens"].to(device, non_blocking=True)
                res = gradcache_step(self.model, pixels, tokens, self.loss_fn, cfg.run.gradcache_sub_batch,
                                     batch=batch)
            else:
                res = forward_loss(self.model, self.loss_fn, batch, device)
        if not cfg.run.gradcache_sub_batch:
            (scaler.scale(res.total) if scaler else res.total).backward()
        return res
