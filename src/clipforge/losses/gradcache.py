"""Gradient caching: the exact gradient of a huge contrastive batch at the activation memory of a sub-batch.

A contrastive loss couples every sample with every other, so the batch cannot simply be split into
accumulated micro-batches. But the loss depends on the encoders only through the embeddings, so

    dL/dθ = Σ_i (dL/de_i) · (de_i/dθ)

1. embed the whole batch without autograd, sub-batch by sub-batch (no activations kept);
2. compute the loss on detached copies of the (N, D) embeddings and backprop it to them, giving the
   cached gradients dL/de (and, directly, the gradients of logit_scale / logit_bias);
3. re-run each sub-batch with autograd and call `emb.backward(cached_grad)`, which accumulates
   exactly the sub-batch's share of dL/dθ.

Step 3 must see the same randomness as step 1 (dropout, stochastic depth): the RNG state is saved before
each sub-batch in step 1 and restored in step 3. Cost: one extra forward of both towers (~ +33% compute).

BatchNorm in train mode (a ResNet or EfficientNet tower being trained) makes this inexact, by construction:
each sub-batch is normalised by its own statistics, not the whole batch's (ghost batch normalisation), and
the exact full-batch gradient would need the gradient through every layer's batch statistics as well. That
case is warned about (`BatchNormSubBatchWarning`, once), not refused; step 1 leaves the running statistics
and batch counters as they were, so each sub-batch updates them once (in step 3), not twice. Frozen BatchNorm
runs in eval mode (models/batchnorm.py): a fixed affine map, exact here.

Under DDP pass the DDP-wrapped model: the bare module is used for the forwards (DDP's reducer expects one
forward per backward, which this is not) and the gradients are averaged over ranks at the end, as DDP
would. The loss module gathers embeddings across ranks itself, so the result is the single-process gradient.
"""
from __future__ import annotations

import warnings
import weakref
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch
from torch import nn

from clipforge.errors import UsageError
from clipforge.losses.distributed import allreduce_grads_, is_distributed
from clipforge.losses.registry import LossOutput
from clipforge.models.batchnorm import train_mode_batchnorms
from clipforge.models.output import CLIPOutput


def _get_rng(device: torch.device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng(state, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class BatchNormSubBatchWarning(UserWarning):
    """Gradient caching over sub-batches on a model with BatchNorm in train mode: not the full-batch step."""


_WARNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # models already warned about


@contextmanager
def _running_stats_kept(model: nn.Module, names: list):
    """BatchNorm layers `names` of `model` end with the running statistics and counters they started with."""
    mods = [model.get_submodule(n) for n in names]
    saved = [[b.clone() for b in m.buffers(recurse=False)] for m in mods]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, old in zip(mods, saved):
                for b, o in zip(m.buffers(recurse=False), old):
                    b.copy_(o)


def _embed(model, pixels, tokens):
    # Both towers run in the same order in both passes, so one RNG snapshot per sub-batch suffices.
    return model.encode_image(pixels, normalize=True), model.encode_text(tokens, normalize=True)


def gradcache_step(model: nn.Module, pixels: torch.Tensor, tokens: torch.Tensor, loss_module: nn.Module,
                   sub_batch: int, *, batch: Optional[dict] = None, sync_grads: Optional[bool] = None
                   ) -> LossOutput:
    """Accumulate into `.grad` the gradient of `loss_module` on the whole batch, using sub-batches.

    model: has encode_image / encode_text and a log-space `logit_scale` Parameter (optionally
    `logit_bias`); may be DDP-wrapped. pixels: (N, 3, H, W); tokens: (N, T); sub_batch: rows per forward.
    sync_grads: average gradients over ranks at the end (default: when the model is DDP-wrapped and
    torch.distributed is running). Returns the LossOutput with detached values. Call it inside
    `torch.autocast(...)` for mixed precision: the loss itself always runs in (at least) float32.
    """
    if sub_batch < 1:
        raise UsageError(f"sub_batch must be a positive number of rows, got {sub_batch}")
    n = pixels.shape[0]
    if tokens.shape[0] != n:
        raise UsageError(f"pixels hold {n} samples but tokens hold {tokens.shape[0]}")
    wrapped = isinstance(model, nn.parallel.DistributedDataParallel)
    core = model.module if wrapped else model
    if sync_grads is None:
        sync_grads = wrapped and is_distributed()
    device = pixels.device
    spans = [(s, min(s + sub_batch, n)) for s in range(0, n, sub_batch)]

    norms = train_mode_batchnorms(core)
    if norms and len(spans) > 1 and core not in _WARNED:
        _WARNED.add(core)
        warnings.warn(f"gradient caching is not exact on this model: {len(norms)} BatchNorm layers in train mode "
                      f"(e.g. {norms[0]}) normalise each sub-batch of {sub_batch} by its own statistics, not the "
                      f"batch of {n}'s, so the step differs from the full batch's (exact: a locked tower, whose "
                      "BatchNorm runs in eval mode, or sub-batches as large as the batch; warned once per model)",
                      BatchNormSubBatchWarning, stacklevel=2)

    # 1. Embed everything without autograd, remembering the RNG state before each sub-batch. BatchNorm running
    #    statistics are left untouched: step 3 sees every sub-batch again and updates them then.
    states, imgs, txts = [], [], []
    with torch.no_grad(), _running_stats_kept(core, norms):
        for s0, s1 in spans:
            states.append(_get_rng(device))
            img, txt = _embed(core, pixels[s0:s1], tokens[s0:s1])
            imgs.append(img)
            txts.append(txt)
    after = _get_rng(device)
    emb_dtype = imgs[0].dtype

    # 2. Loss on detached leaves (at least float32); backward gives dL/d(embeddings) and the scale/bias
    #    gradients.
    loss_dtype = torch.promote_types(emb_dtype, torch.float32)
    img_leaf = torch.cat(imgs).to(loss_dtype).requires_grad_()          # (N, D)
    txt_leaf = torch.cat(txts).to(loss_dtype).requires_grad_()          # (N, D)
    del imgs, txts
    bias = getattr(core, "logit_bias", None)
    autocast_off = torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") \
        else nullcontext()
    with autocast_off:
        out = CLIPOutput(image_embeds=img_leaf, text_embeds=txt_leaf, logit_scale=core.logit_scale.exp(),
                         logit_bias=bias)
        result = loss_module(out, batch)
        result.total.backward()
    img_grad, txt_grad = img_leaf.grad.to(emb_dtype), txt_leaf.grad.to(emb_dtype)   # (N, D) each

    # 3. Re-run each sub-batch with autograd, same randomness, and push the cached gradients through.
    for (s0, s1), state in zip(spans, states):
        _set_rng(state, device)
        img, txt = _embed(core, pixels[s0:s1], tokens[s0:s1])
        pairs = [(e, g[s0:s1]) for e, g in ((img, img_grad), (txt, txt_grad)) if e.requires_grad]
        if pairs:  # a frozen tower (LiT) yields embeddings without grad
            torch.autograd.backward([e for e, _ in pairs], [g for _, g in pairs])
    _set_rng(after, device)

    if sync_grads:
        allreduce_grads_(core.parameters())
    return LossOutput(result.total.detach(), {k: v.detach() for k, v in result.parts.items()})
