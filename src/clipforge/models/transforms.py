"""Image preprocessing without torchvision: Pillow + numpy + torch.

Eval: resize the shortest side to the model's size, centre crop (or squash to a square), normalise.
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


class EvalTransform:
    def __init__(self, image_size: int, cfg: PreprocessConfig):
        self.size, self.cfg = int(image_size), cfg
        self.resample = _RESAMPLE[cfg.interpolation]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB")
        s = self.size
        if self.cfg.resize_mode == "squash":
            img = img.resize((s, s), self.resample)
        else:
            w, h = img.size
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), self.resample)
            left, top = (nw - s) // 2, (nh - s) // 2
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
