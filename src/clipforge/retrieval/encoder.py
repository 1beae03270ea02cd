"""The model side of indexing and querying: load a model reference in the precision that is fastest where it
runs, and turn pixels / PIL images / texts into float32 unit rows.

Precision: casting the *weights* to bf16 is what speeds up CPU inference (MEASURED.md: ViT-B/32 image forward
≈ 2x faster than fp32 on a CPU with native bf16 dot products); autocast alone made it slower, so it is not
offered. "auto" picks bf16 on CUDA devices that support it, and on CPUs with native bf16 (avx512_bf16 / amx)
for models large enough that the matmuls dominate; small models stay fp32 (the casts cost more than they save).
An index records the precision it was built with, so resumes, updates and queries use the same one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from clipforge.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")
# Below this many parameters, bf16 casts cost more than the faster matmuls save (bench_index_build.md).
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
    """'auto' | 'fp32' | 'bf16' -> 'fp32' | 'bf16' for this model on this device."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r}: choose from {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    n_params = sum(p.numel() for p in model.parameters())
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() and n_params >= BF16_MIN_PARAMS else "fp32"


def pick_device(device=None) -> torch.device:
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device {device}: CUDA is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_encoder(ref: str, device=None, precision: str = "auto"):
    """(model in eval mode on device, resolved precision).

    A registered architecture name without weights is randomly initialised; the seed is fixed (0) so every
    process that loads the same reference gets the same weights — a resumed build or a query must embed
    exactly like the job that wrote the index.
    """
    from clipforge.models import load_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = load_model(str(ref))
    dev = pick_device(device)
    model = model.to(dev).eval()
    prec = resolve_precision(precision, model, dev)
    if prec == "bf16":
        model = model.to(torch.bfloat16)  # weights, not autocast (see the module docstring)
    return model, prec


@torch.inference_mode()
def encode_pixels(model, pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) preprocessed pixels -> (B, D) float32 unit rows."""
    if len(pixels) == 0:
        return np.zeros((0, model.config.embed_dim), np.float32)
    return model.encode_image(pixels.to(model.device), normalize=True).float().cpu().numpy()


@torch.inference_mode()
def encode_images(model, images: Sequence, batch_size: int = 64) -> np.ndarray:
    """PIL images -> (N, D) float32 unit rows."""
    out = [encode_pixels(model, torch.stack([model.preprocess(im) for im in images[i:i + batch_size]]))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)


@torch.inference_mode()
def encode_texts(model, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Texts -> (N, D) float32 unit rows."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids = model.tokenizer(list(texts[i:i + batch_size])).to(model.device)  # (b, T)
        out.append(model.encode_text(ids, normalize=True).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)
