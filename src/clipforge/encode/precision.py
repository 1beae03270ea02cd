"""The one precision policy for inference: fp32, bf16 or fp16 weights, or "auto".

Casting the *weights* to bf16 is what speeds up CPU inference: on a Zen 4 CPU with avx512_bf16 a ViT-B/32
image forward ran at 39.9 images/s with bf16 weights against 19.5 in fp32, while bf16 autocast alone made it
slower (14.6 images/s), so autocast is not offered. Where the CPU has no native bf16 dot products (AVX2-only
x86) bf16 is emulated and far slower than fp32. "auto" therefore picks bf16 on CUDA devices that support it,
and on CPUs with native bf16 (avx512_bf16 / AMX) for models large enough that the matmuls dominate; small
models stay fp32, since the casts cost more than the faster matmuls save (docs/bench_index_build.md).
"""
from __future__ import annotations

import torch

from clipforge.errors import UsageError

__all__ = ["PRECISIONS", "DTYPES", "BF16_MIN_PARAMS", "cpu_has_native_bf16", "resolve_precision",
           "precision_of"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_MIN_PARAMS = 20_000_000


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (x86 avx512_bf16 or AMX); elsewhere bf16 is emulated."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, model: torch.nn.Module, device: torch.device) -> str:
    """'auto' | 'fp32' | 'bf16' | 'fp16' -> the concrete precision for this model on this device."""
    if precision not in PRECISIONS:
        raise UsageError(f"`precision` {precision!r} is unknown; choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    n_params = sum(p.numel() for p in model.parameters())
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() and n_params >= BF16_MIN_PARAMS else "fp32"


def precision_of(model: torch.nn.Module) -> str:
    """The precision a model's weights are in now ('fp32' for anything that is not bf16 / fp16)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
