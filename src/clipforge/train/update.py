"""One optimiser update of a training run: the step's learning rate, the forward pass under the run's
precision, backward (or gradient caching), clipping, the optimiser step and the logit-scale clamp."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from clipforge.losses import clamp_logit_scale_
from clipforge.losses.gradcache import gradcache_step
from clipforge.train.config_sections import TrainConfig
from clipforge.train.schedule import lr_at
from clipforge.train.step import forward_loss


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.run.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.run.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Updater:
    """`update(batch, step)` trains `model` (DDP-wrapped or not; `core` is the model itself) on one batch."""

    def __init__(self, cfg: TrainConfig, model, core, loss_fn, opt, scaler, device, total: int):
        self.cfg, self.model, self.core, self.loss_fn = cfg, model, core, loss_fn
        self.opt, self.scaler, self.device, self.total = opt, scaler, device, total
        self.params = [p for p in core.parameters() if p.requires_grad]

    def __call__(self, batch, step: int):
        """(the loss result, the learning rate used, the gradient norm before clipping or None)."""
        cfg, opt, scaler, device = self.cfg, self.opt, self.scaler, self.device
        lr = lr_at(step, base_lr=cfg.optim.lr, total_steps=self.total, warmup_steps=cfg.schedule.warmup_steps,
                   name=cfg.schedule.name, min_lr=cfg.schedule.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        with _autocast(cfg, device):
            if cfg.run.gradcache_sub_batch:
                pixels = batch["pixels"].to(device, non_blocking=True)
                tokens = batch["tokens"].to(device, non_blocking=True)
                res = gradcache_step(self.model, pixels, tokens, self.loss_fn, cfg.run.gradcache_sub_batch,
                                     batch=batch)
            else:
                res = forward_loss(self.model, self.loss_fn, batch, device)
        if not cfg.run.gradcache_sub_batch:
            (scaler.scale(res.total) if scaler else res.total).backward()
        if scaler is not None:
            scaler.unscale_(opt)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip)
                     if cfg.optim.grad_clip else None)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        clamp_logit_scale_(self.core)
        return res, lr, grad_norm
