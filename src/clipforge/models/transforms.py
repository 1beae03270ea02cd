"""Image preprocessing without torchvision: Pillow + numpy + torch.

Eval: resize the shortest side to the model's size, centre crop (or squash to a square), normalise — exactly as
open_clip (torchvision) or transformers' image processors do, by `PreprocessConfig.convention`.
Train: random resized crop (area in `crop_scale`, aspect 3/4..4/3), optional horizontal flip, normalise.
The train transform's randomness is explicit: `sample_params(w, h)` draws an `AugParams` (crop box in the
decoded image's pixels, flip) and `apply(img, params)` replays exactly it, at any output size — what dataset
reinforcement stores per image so a student later sees the very crop its teacher saw.
Transforms are picklable classes so DataLoader worker processes can use them; randomness comes from torch's
RNG (seeded per sample by the training loader) or a given `torch.Generator`.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
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


CONVENTIONS = ("open_clip", "hf", "hf_torchvision")


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


def tv_resize_uint8(x: torch.Tensor, h: int, w: int, interpolation: str) -> torch.Tensor:
    """torchvision's `resize` of a uint8 (N, C, H, W) tensor on the CPU, antialiased: bicubic always and
    bilinear on AVX2/AVX-512/ARM run torch's native uint8 kernel; elsewhere it computes in float32, clamps
    and rounds, as torchvision does."""
    if interpolation == "nearest":
        return F.interpolate(x, size=[h, w], mode="nearest")
    native = interpolation == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") \
        or platform.machine() in ("aarch64", "arm64")
    if native:
        return F.interpolate(x, size=[h, w], mode=interpolation, align_corners=False, antialias=True)
    y = F.interpolate(x.to(torch.float32), size=[h, w], mode=interpolation, align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


class EvalTransform:
    """Resize the shortest side + centre crop (or squash to a square), then normalise; equal to the reference
    pipeline named by `cfg.convention` bit for bit (docs/fidelity.md):

    open_clip  torchvision `Resize(size, BICUBIC)`, `CenterCrop(size)`, convert to RGB, `ToTensor`, `Normalize`
               (the image is resized in its own mode: palette images nearest-neighbour, RGBA premultiplied).
    hf         transformers' CLIPImageProcessor / SiglipImageProcessor (PIL backend): composite on white to
               RGB, resize, crop with a floored offset, rescale, normalise.
    hf_torchvision  the same processors' torchvision backend, transformers 5.x's default: composite on white,
               resize the uint8 tensor with torch's antialiased interpolation (not Pillow's filter: up to 0.135
               apart on noise), crop with a floored offset, normalise by mean and std scaled to 0..255.

    `crop_pct` < 1 (timm's eval crop) resizes to floor(size / crop_pct) first, shortest side or squashed, and
    crops the centre `size` x `size`: timm's `transforms_imagenet_eval` (torchvision on PIL, as open_clip).
    """

    def __init__(self, image_size: int, cfg: PreprocessConfig):
        self.size, self.cfg = int(image_size), cfg
        self.scale = self.size if cfg.crop_pct == 1 else math.floor(self.size / cfg.crop_pct)  # timm's formula
        # hf_torchvision: transformers fuses rescale into normalise, (x - 255 mean) / (255 std) in float32
        self._tv_mean = (torch.tensor(cfg.mean) * (1.0 / (1.0 / 255.0)))[:, None, None]
        self._tv_std = (torch.tensor(cfg.std) * (1.0 / (1.0 / 255.0)))[:, None, None]
        self.resample = _RESAMPLE[cfg.interpolation]
        if cfg.convention not in CONVENTIONS:
            raise UsageError(f"unknown preprocess convention {cfg.convention!r}; valid: {', '.join(CONVENTIONS)}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        conv, s, scale = self.cfg.convention, self.size, self.scale
        if conv == "hf_torchvision":
            return self._torchvision(composite_rgb(img))
        if conv == "hf":
            img = composite_rgb(img)
        nw, nh = (scale, scale) if self.cfg.resize_mode == "squash" else resized_size(*img.size, scale)
        if (nw, nh) != img.size:
            img = img.resize((nw, nh), self.resample)
        if (nw, nh) != (s, s):
            left, top = crop_offset(nw, s, conv), crop_offset(nh, s, conv)
            img = img.crop((left, top, left + s, top + s))
        return to_tensor(img, self.cfg.mean, self.cfg.std, self.cfg.per_image_norm)

    def _torchvision(self, img: Image.Image) -> torch.Tensor:
        s, scale = self.size, self.scale
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)[None]  # (1, 3, H, W)
        h, w = x.shape[-2:]
        nw, nh = (scale, scale) if self.cfg.resize_mode == "squash" else resized_size(w, h, scale)
        if (nh, nw) != (h, w):
            x = tv_resize_uint8(x, nh, nw, self.cfg.interpolation)
        if (nh, nw) != (s, s):
            top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
            x = x[..., top: top + s, left: left + s]
        out = (x[0].to(torch.float32) - self._tv_mean) / self._tv_std
        if self.cfg.per_image_norm:
            out = (out - out.mean()) / (out.std() + 1e-6)
        return out.contiguous()

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, {self.cfg})"


@dataclass(frozen=True)
class AugParams:
    """One draw of the train augmentation: crop box (x0, y0, x1, y1) in pixels of the decoded image, then
    a horizontal flip or not. Independent of the output size, so a teacher and a student of different
    resolutions can see the same view. `as_row()` / `from_row()`: 5 floats, for storage."""

    box: tuple
    flip: bool = False

    def as_row(self) -> list[float]:
        return [float(v) for v in self.box] + [1.0 if self.flip else 0.0]

    @classmethod
    def from_row(cls, row) -> "AugParams":
        x0, y0, x1, y1, flip = (float(v) for v in row)
        return cls((int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))), flip >= 0.5)


def _uniform(lo: float, hi: float, generator: Optional[torch.Generator]) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=generator))


class TrainTransform:
    """Random resized crop + optional flip + normalise. `__call__(img)` draws fresh parameters;
    `sample_params` + `apply` split the draw from its application (see `AugParams`)."""

    def __init__(self, image_size: int, cfg: PreprocessConfig):
        self.size, self.cfg = int(image_size), cfg
        self.resample = _RESAMPLE[cfg.interpolation]

    def _crop_box(self, w: int, h: int, generator: Optional[torch.Generator] = None):
        lo, hi = self.cfg.crop_scale
        log_r = (math.log(3 / 4), math.log(4 / 3))
        for _ in range(10):
            area = w * h * _uniform(lo, hi, generator)
            ratio = math.exp(_uniform(*log_r, generator))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                y = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                return x, y, x + cw, y + ch
        c = min(w, h)  # fallback: central square crop
        return (w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c

    def sample_params(self, w: int, h: int, generator: Optional[torch.Generator] = None) -> AugParams:
        """Draw the augmentation for a w x h image (torch's global RNG unless a generator is given)."""
        box = self._crop_box(int(w), int(h), generator)
        flip = bool(self.cfg.hflip and bool(torch.rand(1, generator=generator) < 0.5))
        return AugParams(box, flip)

    def apply(self, img: Image.Image, params) -> torch.Tensor:
        """The view `params` (an `AugParams` or its 5-number row) describes, at this transform's size and
        normalisation: (3, size, size)."""
        if not isinstance(params, AugParams):
            params = AugParams.from_row(params)
        img = img.convert("RGB")
        x0, y0, x1, y1 = params.box
        if not (0 <= x0 < x1 <= img.size[0] and 0 <= y0 < y1 <= img.size[1]):
            raise ValueError(f"crop box {params.box} does not fit a {img.size[0]}x{img.size[1]} image")
        img = img.resize((self.size, self.size), self.resample, box=params.box)
        if params.flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img, self.cfg.mean, self.cfg.std, self.cfg.per_image_norm)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.apply(img, self.sample_params(*img.size))

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, {self.cfg})"


def image_transform(config: CLIPConfig, train: bool = False):
    cls = TrainTransform if train else EvalTransform
    return cls(config.vision.image_size, config.preprocess)


def collate_images(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (3, H, W) tensors into a (B, 3, H, W) batch."""
    return torch.stack(list(tensors), 0)
