"""The reference engine: the model's own PyTorch towers, eager, under `torch.inference_mode`."""
from __future__ import annotations

from typing import Optional

import torch

from clipforge.encode.device import pick_device
from clipforge.encode.engine import ENGINES, Engine, check_precision
from clipforge.encode.precision import DTYPES, PRECISIONS, precision_of, resolve_precision
from clipforge.errors import UsageError
from clipforge.models.token_merge import METHODS, apply_token_merge
from clipforge.models.unwrap import unwrap_model
from clipforge.registry import Option

__all__ = ["TorchEngine"]


@ENGINES.register("torch")
class TorchEngine(Engine):
    """PyTorch eager on the model itself (the reference every other engine is compared with).

    `device` None keeps the model where it is; `precision` None keeps its weights' dtype, anything else
    resolves "auto" (see `precision.py`) and casts the weights in place. `token_merge` (tokens merged per ViT
block, or per-block counts; `merge_method` tome | pitome) sets token merging on the image tower in place
(`models.token_merge`); None keeps the model's own setting. Each call puts the model in eval mode
    and restores the mode it was in, so a model in the middle of training can be evaluated.
    """

    options = (Option("device", str, help="cpu, cuda, cuda:1 ... (default: where the model is)"),
               Option("precision", str, help="auto | fp32 | bf16 | fp16 (default: the weights' dtype)"),
               Option("threads", int, help="torch intra-op threads during each call (default: as set)"),
               Option("token_merge", str, help="ViT image tower: tokens merged per block (R, or R1,R2,... per "
                                               "block; 0 exact); see models.token_merge"),
               Option("merge_method", str, choices=METHODS, help="token merging rule: tome | pitome"))
    precisions = PRECISIONS

    def __init__(self, model, device=None, precision: Optional[str] = None, threads: Optional[int] = None,
                 token_merge=None, merge_method: Optional[str] = None):
        if threads is not None and threads < 1:
            raise UsageError(f"`threads` must be >= 1, got {threads}")
        self.threads = threads
        model = unwrap_model(model)
        if token_merge is not None:
            apply_token_merge(model, token_merge, merge_method)
        elif merge_method is not None:
            raise UsageError("`merge_method` needs `token_merge` (the tokens merged per block)")
        self.token_merge = getattr(getattr(model, "visual", None), "token_merge", None)
        if device is not None:
            model = model.to(pick_device(device))
        self.model = model
        self.device = model.device
        if precision is None:
            self.precision = precision_of(model)
        else:
            check_precision(self.name, precision)  # int8: the exported graphs' (onnx, openvino, auto)
            self.precision = resolve_precision(precision, model, self.device)
            if precision_of(model) != self.precision:
                model.to(DTYPES[self.precision])  # weights, not autocast (see precision.py)
        self.embed_dim = model.config.embed_dim
        self.preprocess = model.preprocess
        self.tokenizer = model.tokenizer

    def _run(self, fn, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        was_training, threads = self.model.training, torch.get_num_threads()
        self.model.eval()
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # torch's setting is per process: restored after the call
        try:
            with torch.inference_mode():
                return fn(x.to(self.device), normalize=normalize).float().cpu()
        finally:
            self.model.train(was_training)
            if self.threads is not None:
                torch.set_num_threads(threads)

    def describe(self) -> dict:
        d = {**super().describe(), "threads": self.threads or torch.get_num_threads()}
        return {**d, "token_merge": self.token_merge.to_dict()} if self.token_merge is not None else d

    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._run(self.model.encode_image, pixels, normalize)

    def encode_tokens(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._run(self.model.encode_text, token_ids, normalize)
