"""WiSE-FT weight-space interpolation: θ = (1 − α)·θ_zero-shot + α·θ_fine-tuned, tensor by tensor."""
from __future__ import annotations

import copy
from typing import Iterable, List

import torch

from clipforge.errors import UsageError


def interpolate_models(model_a, model_b, alpha: float):
    """A copy of `model_a` whose floating-point weights are (1 − alpha)·A + alpha·B (alpha=0: A, 1: B)."""
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"`alpha` must be in [0, 1], got {alpha}")
    if model_a.config != model_b.config:
        diff = [k for k, v in model_a.config.to_dict().items() if model_b.config.to_dict().get(k) != v]
        raise UsageError(f"models have different architectures (differ in {diff}); cannot interpolate")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    out = copy.deepcopy(model_a)
    with torch.no_grad():
        mixed = {k: ((1 - alpha) * sa[k].float() + alpha * sb[k].float()).to(sa[k].dtype)
                 if sa[k].is_floating_point() else sa[k] for k in sa}
    out.load_state_dict(mixed)
    return out


def parse_alphas(alphas: str) -> List[float]:
    """'0,0.25,0.5' -> [0.0, 0.25, 0.5]."""
    text = alphas
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise UsageError(f"`alphas` expects comma-separated numbers in [0, 1], got {text!r}")
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise UsageError(f"`alphas` expects comma-separated numbers in [0, 1], got {text!r}")
    return alphas


def sweep(model_a, model_b, alphas: Iterable[float], evaluate) -> List[dict]:
    """Evaluate interpolations at each alpha: `evaluate(model) -> dict of metrics`."""
    rows = []
    for a in alphas:
        m = interpolate_models(model_a, model_b, a).eval()
        rows.append({"alpha": a, **evaluate(m)})
    return rows
