"""Image preprocessing without torchvision: Pillow + numpy + torch.

Eval: resize the shortest side to the model's size, centre crop (or squash to a square), normalise — exactly as
open_clip (torchvision) or transformers' image processors do, by `PreprocessConfig.convention`.
Train: random resized crop (area in `crop_scale`, aspect 3/4..4/3), optional horizontal flip, normalise.
Transforms are picklable classes so DataLoader worker processes can use them; randomness comes from torch's
RNG, which DataLoader seeds per worker.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from clipforge.errors import UsageError
from clipforge.models.config import CLIPConfig, PreprocessConfig

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float], per_image_norm: bool = False
              ) -> torch.Tensor:
    """PIL image -> normalised float tensor (3, H, W)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    if per_image_norm:
        arr = (arr - arr.mean()) / (arr.std() + 1e-6)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


CONVENTIONS = ("open_clip", "hf")


def composite_rgb(img: Image.Image) -> Image.Image:
    """transformers' `convert_to_rgb`: transparency (alpha band or palette/tRNS key) composited on white."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) after resizing the shortest side to `size`: the long side is truncated, `int(size * long /
    short)`, as torchvision's `Resize(int)` and transformers' `shortest_edge` both do (not rounded)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def crop_offset(extent: int, size: int, convention: str) -> int:
    """Left/top offset of a centre crop: torchvision rounds half to even (`int(round(d / 2.0))`), transformers
    floors (`d // 2`); they differ by one pixel when the margin `d` is 3 mod 4 (e.g. 299 -> 224: 38 vs 37)."""
    d = extent - size
    return int(round(d / 2.0)) if convention == "open_clip" else d // 2


class EvalTransform:
    """Resize the shortest side + centre crop (or squash to a square), then normalise; equal to the reference
    pipeline named by `cfg.convention` bit for bit (docs/fidelity.md):

    open_clip  torchvision `Resize(size, BICUBIC)`, `CenterCrop(size)`, convert to RGB, `ToTensor`, `Normalize`
               (the image is resized in its own mode: palette images nearest-neighbour, RGBA premultiplied).
    hf         transformers' CLIPImageProcessor / SiglipImageProcessor (PIL backend): composite on white to
               RGB, resize, crop with a floored offset, rescale, normalise.
    """

    def __init__(self, image_size: int, cfg: PreprocessConfig):
        self.size, self.cfg = int(image_size), cfg
        self.resample = _RESAMPLE[cfg.interpolation]
        if cfg.convention not in CONVENTIONS:
            raise UsageError(f"unknown preprocess convention {cfg.convention!r}; valid: {', '.join(CONVENTIONS)}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        conv, s = self.cfg.convention, self.size
        if conv == "hf":
            img = composite_rgb(img)
        if self.cfg.resize_mode == "squash":
            if img.size != (s, s):
                img = img.resize((s, s), self.resample)
        else:
            nw, nh = resized_size(*img.size, s)
            if (nw, nh) != img.size:
                img = img.resize((nw, nh), self.resample)
            left, top = crop_offset(nw, s, conv), crop_offset(nh, s, conv)
            img = img.crop((left, top, left + s, top + s))
        return to_tensor(img, self.cfg.mean, self.cfg.std, self.cfg.per_image_norm)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, {self.cfg})"


class TrainTransform:
    def __init__(self, image_size: int, cfg: PreprocessConfig):
        self.size, self.cfg = int(image_size), cfg
        self.resample = _RESAMPLE[cfg.interpolation]

    def _crop_box(self, w: int, h: int):
        lo, hi = self.cfg.crop_scale
        log_r = (math.log(3 / 4), math.log(4 / 3))
        for _ in range(10):
            area = w * h * float(torch.empty(1).uniform_(lo, hi))
            ratio = math.exp(float(torch.empty(1).uniform_(*log_r)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x = int(torch.randint(0, w - cw + 1, (1,)))
                y = int(torch.randint(0, h - ch + 1, (1,)))
                return x, y, x + cw, y + ch
        c = min(w, h)  # fallback: central square crop
        return (w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB")
        box = self._crop_box(*img.size)
        img = img.resize((self.size, self.size), self.resample, box=box)
        if self.cfg.hflip and bool(torch.rand(1) < 0.5):
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img, self.cfg.mean, self.cfg.std, self.cfg.per_image_norm)

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, {self.cfg})"


def image_transform(config: CLIPConfig, train: bool = False):
    cls = TrainTransform if train else EvalTransform
    return cls(config.vision.image_size, config.preprocess)


def collate_images(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (3, H, W) tensors into a (B, 3, H, W) batch."""
    return torch.stack(list(tensors), 0)
