"""The reference engine: the model's own PyTorch towers, eager, under `torch.inference_mode`."""
from __future__ import annotations

from typing import Optional

import torch

from clipforge.encode.device import pick_device
from clipforge.encode.engine import ENGINES, Engine
from clipforge.encode.precision import DTYPES, precision_of, resolve_precision
from clipforge.models.unwrap import unwrap_model
from clipforge.registry import Option

__all__ = ["TorchEngine"]


@ENGINES.register("torch")
class TorchEngine(Engine):
    """PyTorch eager on the model itself (the reference every other engine is compared with).

    `device` None keeps the model where it is; `precision` None keeps its weights' dtype, anything else
    resolves "auto" (see `precision.py`) and casts the weights in place. Each call puts the model in eval mode
    and restores the mode it was in, so a model in the middle of training can be evaluated.
    """

    options = (Option("device", str, help="cpu, cuda, cuda:1 ... (default: where the model is)"),
               Option("precision", str, help="auto | fp32 | bf16 | fp16 (default: the weights' dtype)"))

    def __init__(self, model, device=None, precision: Optional[str] = None):
        model = unwrap_model(model)
        if device is not None:
            model = model.to(pick_device(device))
        self.model = model
        self.device = model.device
        if precision is None:
            self.precision = precision_of(model)
        else:
            self.precision = resolve_precision(precision, model, self.device)
            if precision_of(model) != self.precision:
                model.to(DTYPES[self.precision])  # weights, not autocast (see precision.py)
        self.embed_dim = model.config.embed_dim
        self.preprocess = model.preprocess
        self.tokenizer = model.tokenizer

    def _run(self, fn, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return fn(x.to(self.device), normalize=normalize).float().cpu()
        finally:
            self.model.train(was_training)

    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._run(self.model.encode_image, pixels, normalize)

    def encode_tokens(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._run(self.model.encode_text, token_ids, normalize)
