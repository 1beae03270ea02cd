"""Common corruptions at five severities (after ImageNet-C, Hendrycks & Dietterich 2019), with numpy and Pillow.

`corrupt(pixels, name, severity, rng)` takes an (H, W, 3) float array in [0, 1] — the image the model sees,
after its resize and crop — and returns the corrupted copy, clipped to [0, 1]. Severity 1..5 picks ImageNet-C's
parameter for that level; the two corruptions whose parameter is a length (blur radius, pixelation block) scale
it by the image side / 224 (ImageNet-C's side), so a 32-pixel digit is blurred as much, relative to its size,
as a 224-pixel photo:

  gaussian_noise  x + N(0, c^2),  c = .08 .12 .18 .26 .38
  shot_noise      Poisson(x * c) / c,  c = 60 25 12 5 3
  impulse_noise   salt-and-pepper on a fraction c of the values,  c = .03 .06 .09 .17 .27
  gaussian_blur   Gaussian blur, sigma = c * side / 224,  c = 1 2 3 4 6
  pixelate        down to c * side with a box filter, back up with nearest,  c = .6 .5 .4 .3 .25
  jpeg            JPEG round trip (Pillow), quality c = 25 18 15 10 7
  contrast        (x - mean) * c + mean,  c = .4 .3 .2 .1 .05
  brightness      value channel + c in HSV,  c = .1 .2 .3 .4 .5

ImageNet-C's remaining ones (glass, motion and zoom blur, snow, frost, fog, elastic) need assets or
scikit-image paths it does not pin; they are not here. Noise draws come from `rng`, so a seed fixes them.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from clipforge.errors import UsageError

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt"]

SEVERITIES = (1, 2, 3, 4, 5)
_PARAMS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg": (25, 18, 15, 10, 7),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
}


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255 + 0.5))


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _gaussian_noise(x, c, rng):
    return x + rng.normal(0.0, c, x.shape)


def _shot_noise(x, c, rng):
    return rng.poisson(np.clip(x, 0, 1) * c) / c


def _impulse_noise(x, c, rng):
    out = x.copy()
    hit = rng.random(x.shape) < c
    out[hit] = rng.integers(0, 2, int(hit.sum()))  # half salt, half pepper
    return out


def _gaussian_blur(x, c, rng):
    return _arr(_pil(x).filter(ImageFilter.GaussianBlur(radius=c * x.shape[0] / 224)))


def _pixelate(x, c, rng):
    h, w = x.shape[:2]
    small = _pil(x).resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return _arr(small.resize((w, h), Image.NEAREST))


def _jpeg(x, c, rng):
    buf = io.BytesIO()
    _pil(x).save(buf, format="JPEG", quality=int(c))
    return _arr(Image.open(io.BytesIO(buf.getvalue())))


def _contrast(x, c, rng):
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * c + mean


def _brightness(x, c, rng):
    """HSV value + c with hue and saturation kept: each pixel scaled by new / old value (black becomes grey)."""
    v = x.max(axis=2, keepdims=True)
    new = np.clip(v + c, 0, 1)
    return np.where(v > 0, x * (new / np.maximum(v, 1e-12)), new)


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur, "pixelate": _pixelate, "jpeg": _jpeg, "contrast": _contrast,
    "brightness": _brightness,
}


def corrupt(pixels: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """`pixels` (H, W, 3) in [0, 1] under corruption `name` at `severity` (1..5), as float32 in [0, 1]."""
    if name not in CORRUPTIONS:
        raise UsageError(f"`corruptions`: {name!r} is not one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UsageError(f"`severities`: {severity!r} is not one of 1..5")
    x = np.asarray(pixels, dtype=np.float32)
    return np.clip(CORRUPTIONS[name](x, _PARAMS[name][severity - 1], rng), 0, 1).astype(np.float32)
