"""The one device policy: where models run when the caller does not say."""
from __future__ import annotations

from typing import Optional

import torch

from clipforge.errors import UsageError

__all__ = ["pick_device"]


def pick_device(device=None, *, local_rank: Optional[int] = None, param: str = "device") -> torch.device:
    """`device` as given (a CUDA device must exist), else CUDA when available (`cuda:local_rank` under torchrun),
    else the CPU. `param` is the parameter named in the error (e.g. `run.device` for a training config)."""
    if device is not None and str(device) != "":
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise UsageError(f"`{param}` {device!r} is not a device ({e}); use cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"`{param}` {device}: CUDA is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    return torch.device("cpu")
