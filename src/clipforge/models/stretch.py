"""Long-CLIP's knowledge-preserving positional stretching: more text positions without retraining the
well-trained first ones.

    model = stretch_model(load_model("ViT-B-32-ckpt"), context_length=248)    # 77 -> 248 positions
    model.save_pretrained("vit-b-32-long")                                     # `clipforge stretch`

The first `keep` = 20 position embeddings are kept; each later gap between old positions i and i+1 is filled
with `factor` = 4 linear interpolations, and the last old position is extrapolated over the final `factor`
rows (github.com/beichenzbc/Long-CLIP, `longclip.load_from_clip`):

    new[i]               = pe[i]                                   i < keep
    new[keep + f·j + k]  = (1 − k/f)·pe[keep + j] + (k/f)·pe[keep + j + 1]      0 ≤ j < L − 1 − keep, 0 ≤ k < f
    new[keep + f·(L−1−keep) + k] = pe[L−1] + k·(pe[L−1] − pe[L−2])/f

giving keep + f·(L − keep) rows (248 for L = 77, f = 4), cut to `context_length` when that is shorter. Old
position p sits exactly at row p (p < keep) or keep + f·(p − keep). With `short_positions="original"` (the
default) a text that still fits in the old context is embedded on exactly those rows, so its embedding is
unchanged (tested ≤ 1e-5); longer texts use consecutive rows. `short_positions="stretched"` puts every text
on consecutive rows, as Long-CLIP does (short texts then change slightly until fine-tuned, and the model
exports to other formats). Fine-tune with the `longclip` loss; the trainer keeps the `keep` first rows
frozen, as Long-CLIP does.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from clipforge.errors import UsageError
from clipforge.models.factory import build_model
from clipforge.models.config_checks import SHORT_POSITIONS

__all__ = ["stretch_positions", "stretch_model", "freeze_kept_positions"]


def stretch_positions(pe: torch.Tensor, keep: int = 20, factor: int = 4) -> torch.Tensor:
    """(L, W) position embeddings -> (keep + factor·(L − keep), W), Long-CLIP's interpolation (float64 math)."""
    L = pe.shape[0]
    if not 0 <= keep <= L - 2:
        raise UsageError(f"`keep` must be in [0, {L - 2}] for {L} positions, got {keep}")
    if factor < 1:
        raise UsageError(f"`factor` must be >= 1, got {factor}")
    src = pe.detach().double()
    rows = [src[:keep]]
    w = torch.arange(factor, dtype=torch.float64)[:, None] / factor               # (f, 1): k/f
    a, b = src[keep:L - 1], src[keep + 1:L]                                       # (L-1-keep, W) each
    rows.append(((1 - w)[None] * a[:, None] + w[None] * b[:, None]).reshape(-1, pe.shape[1]))
    rows.append(src[L - 1][None] + w * (src[L - 1] - src[L - 2])[None])          # extrapolated tail
    return torch.cat(rows).to(pe.dtype)


def stretch_model(model, context_length: Optional[int] = None, *, keep: int = 20, factor: Optional[int] = None,
                  short_positions: str = "original"):
    """A copy of `model` whose text tower takes `context_length` tokens (default: keep + 4·(L − keep)), its
    tokenizer likewise; everything else unchanged. `factor` default: the smallest that reaches the length."""
    t = model.config.text
    L = t.context_length
    if t.stretched_from is not None:
        raise UsageError(f"this model was already stretched (from {t.stretched_from} to {L} positions)")
    if not t.causal or t.pool not in ("argmax", "eos"):
        raise UsageError("stretching needs a causal text tower pooled at its end token (CLIP-style); a "
                         "bidirectional or mean-pooled tower's output depends on the padded length")
    if short_positions not in SHORT_POSITIONS:
        raise UsageError(f"`short_positions` must be one of {', '.join(SHORT_POSITIONS)}, got {short_positions!r}")
    if not 0 <= keep <= L - 2:
        raise UsageError(f"`keep` must be in [0, {L - 2}] for a {L}-position model, got {keep}")
    if factor is None:
        factor = 4 if context_length is None else max(2, math.ceil((context_length - keep) / (L - keep)))
    full = keep + int(factor) * (L - keep)
    n = full if context_length is None else int(context_length)
    if not L < n <= full:
        raise UsageError(f"`context_length` must be in ({L}, {full}] for keep={keep}, factor={factor}; got {n}")
    cfg = model.config.replace(text={"context_length": n, "stretched_from": L, "stretch_keep": keep,
                                     "stretch_factor": int(factor), "short_positions": short_positions})
    tok = model.tokenizer.with_options(context_length=n) if model.tokenizer is not None else None
    new = build_model(cfg, tokenizer=tok)
    state = {k: v for k, v in model.state_dict().items()}
    state["text.positional_embedding"] = stretch_positions(state["text.positional_embedding"], keep, factor)[:n]
    new.load_state_dict(state, strict=True)
    return new.to(device=model.device, dtype=model.dtype).train(model.training)


def freeze_kept_positions(model) -> bool:
    """Zero the gradient of a stretched text tower's `keep` first position rows (Long-CLIP fine-tunes only
    the stretched ones). Returns whether the model is stretched (and a hook was added)."""
    t = model.config.text
    if t.stretched_from is None or t.stretch_keep <= 0:
        return False
    keep = t.stretch_keep
    pe = model.text.positional_embedding

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:keep] = 0
        return grad

    pe.register_hook(hook)
    return True
