"""`opt.step()` of a fused torch AdamW without its per-call Python bookkeeping.

`torch.optim.AdamW(fused=True).step()` spends ~200 µs per call outside its kernel on this CPU (hooks, profiler
records, regrouping every tensor by device and dtype, re-reading the state): next to a cached-feature step of
~1 ms that is a fifth of the step (docs/bench_feature_cache.md). `FastAdamW` lets torch take the first step
(which creates the state), then keeps each group's parameter and state lists and calls the same fused kernel
the same way torch does (`torch._foreach_add_` on the step counters, then `torch._fused_adamw_`), so the
parameters and the optimizer's state_dict are bit-identical to `opt.step()`'s (tests/test_adamw_step.py).
Whatever it does not cover (amsgrad, maximize, capturable, step hooks, mixed devices or dtypes in a group, a
parameter without a gradient) goes through `opt.step()`.
"""
from __future__ import annotations

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks


def fast_adamw_applies(opt: torch.optim.Optimizer) -> bool:
    """True when `opt` is a fused AdamW whose step `FastAdamW` reproduces exactly."""
    d = opt.defaults
    if not isinstance(opt, torch.optim.AdamW) or not d.get("fused"):
        return False
    if any(d.get(k) for k in ("amsgrad", "maximize", "capturable", "differentiable")):
        return False
    for g in opt.param_groups:
        if len({(p.device, p.dtype) for p in g["params"]}) > 1 or g.get("amsgrad") or g.get("maximize"):
            return False
    return True


class FastAdamW:
    """`FastAdamW(opt).step()`: the step of `opt` (a fused AdamW, see `fast_adamw_applies`)."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt = opt
        self._groups = None   # per group: (params, exp_avgs, exp_avg_sqs, steps), once the state exists

    def _hooked(self) -> bool:
        o = self.opt
        return bool(o._optimizer_step_pre_hooks or o._optimizer_step_post_hooks or _global_optimizer_pre_hooks
                    or _global_optimizer_post_hooks)

    def _collect(self):
        groups = []
        for g in self.opt.param_groups:
            params = [p for p in g["params"] if p in self.opt.state]
            if len(params) != len(g["params"]):
                return None
            st = [self.opt.state[p] for p in params]
            groups.append((params, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                           [s["step"] for s in st]))
        return groups

    def step(self) -> None:
        if self._groups is None or self._hooked():
            self.opt.step()
            self._groups = None if self._hooked() else self._collect()
            return
        grads = [[p.grad for p in params] for params, *_ in self._groups]
        if any(gr is None for gs in grads for gr in gs):
            self.opt.step()  # a parameter without a gradient: torch skips it, and so must we
            return
        for g, (params, exp_avgs, exp_avg_sqs, steps), gs in zip(self.opt.param_groups, self._groups, grads):
            if not params:
                continue
            beta1, beta2 = g["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(params, gs, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=g["lr"],
                                beta1=beta1, beta2=beta2, weight_decay=g["weight_decay"], eps=g["eps"],
                                maximize=False, grad_scale=None, found_inf=None)

    def reset(self) -> None:
        """Forget the state lists (after `opt.load_state_dict`, which replaces the state tensors)."""
        self._groups = None
