"""Learning-rate schedules as pure functions of the step (nothing to checkpoint beyond the step)."""
from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0, name: str = "cosine",
          min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 over `warmup_steps`, then cosine decay to `min_lr` at `total_steps` (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if name == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
