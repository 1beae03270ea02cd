"""Safe image decoding and the counter that records what was skipped and why.

Every reader funnels its bytes through `decode_image`, which either returns an RGB `PIL.Image` with its EXIF
orientation applied or raises `BadSample(reason)`. Callers that walk a whole collection catch `BadSample`,
add it to a `SkipCounter`, and carry on: a long job never dies on one bad file, and never drops one silently.

Reasons are short fixed strings so reports can be grouped and compared across runs:
  missing_file, unreadable, not_a_file (a FIFO, socket, device or directory under an image's name),
  empty_file, not_an_image, truncated, too_large, bad_size, unsupported_mode, decode_error, no_image (a record without any image payload), bad_record (a manifest row / tar member
  that cannot be parsed), no_caption / no_label (the training / eval loader needs one), remote_url (an http(s) path: fetch collections first, e.g. with img2dataset).
"""
from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipforge.data.fs import DEFAULT_MAX_FILE_BYTES, FileRefused, read_regular

# 89.5 Mpx is Pillow's own default bomb limit; a collection can raise or lower it per reader.
DEFAULT_MAX_PIXELS = 89_478_485

REASONS = (
    "missing_file", "unreadable", "not_a_file", "empty_file", "not_an_image", "truncated", "too_large", "bad_size",
    "unsupported_mode", "decode_error", "no_image", "bad_record", "remote_url",
    "no_caption", "no_label",
)


class BadSample(Exception):
    """One sample could not be used. `reason` is one of `REASONS`; `detail` is free text for humans."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter(Counter):
    """reason -> count, plus `samples`: the first `max_samples` (id, reason) pairs, for reports.

    A `Counter` so merging worker counts is `a.update(b)`; `as_dict()` gives the JSON form.
    """

    def __init__(self, *args, max_samples: int = 10_000, **kw):
        super().__init__(*args, **kw)
        self.samples: list[tuple[str, str]] = []
        self.max_samples = max_samples

    def add(self, sample_id: str, reason: str) -> None:
        self[reason] += 1
        if len(self.samples) < self.max_samples:
            self.samples.append((str(sample_id), reason))

    def merge(self, other) -> None:
        """Add another counter (or a plain reason->count dict, e.g. from a worker's batch)."""
        self.update(dict(other))
        for item in getattr(other, "samples", ()):
            if len(self.samples) < self.max_samples:
                self.samples.append(tuple(item))

    @property
    def total(self) -> int:
        return sum(self.values())

    def as_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.items())),
                "samples": [list(s) for s in self.samples]}

    def copy(self) -> "SkipCounter":
        new = SkipCounter(dict(self), max_samples=self.max_samples)
        new.samples = list(self.samples)
        return new

    def __reduce__(self):  # keep `samples` when pickled to/from worker processes
        return (_rebuild_counter, (dict(self), self.samples, self.max_samples))


def _rebuild_counter(counts, samples, max_samples):
    c = SkipCounter(counts, max_samples=max_samples)
    c.samples = list(samples)
    return c


@dataclass(frozen=True)
class DecodeOptions:
    max_pixels: int | None = DEFAULT_MAX_PIXELS   # None disables the bomb check
    background: tuple[int, int, int] = (255, 255, 255)  # what transparent pixels become
    apply_exif: bool = True


def read_bytes(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """Read a regular file (never a FIFO, socket or device), mapping every failure to a `BadSample` reason."""
    if "://" in str(path):
        raise BadSample("remote_url", str(path))
    try:
        return read_regular(path, max_bytes)
    except FileRefused as e:
        raise BadSample(e.reason, e.detail) from None


def decode_image(data: bytes, opts: DecodeOptions = DecodeOptions()) -> Image.Image:
    """bytes -> fully decoded RGB image (EXIF orientation applied), or raise `BadSample`."""
    if not data:
        raise BadSample("empty_file")
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        if old_limit is not None and (opts.max_pixels is None or opts.max_pixels > old_limit):
            Image.MAX_IMAGE_PIXELS = opts.max_pixels  # let a caller allow more than Pillow's default
        with warnings.catch_warnings():
            # Pillow warns (not raises) between 1x and 2x its limit (our own limit decides), and about
            # corrupt EXIF/TIFF tags on every such file: in a job over millions of images that is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            im = _open_and_load(data, opts)
            orig_mode = im.mode
            try:
                if opts.apply_exif:
                    im = ImageOps.exif_transpose(im)
                rgb = to_rgb(im, opts.background)
            except Exception as e:  # noqa: BLE001 - any conversion failure is a bad sample, not a crash
                raise BadSample("unsupported_mode", f"{orig_mode}: {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    rgb.info["orig_mode"] = orig_mode
    return rgb


def _open_and_load(data: bytes, opts: DecodeOptions) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadSample("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise BadSample("not_an_image", "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as e:
        raise BadSample(_reason(e), str(e)) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise BadSample("bad_size", f"{w}x{h}")
    # Check the header's size *before* decoding any pixels, so a bomb costs nothing.
    if opts.max_pixels is not None and w * h > opts.max_pixels:
        raise BadSample("too_large", f"{w}x{h} = {w * h} px > max_pixels {opts.max_pixels}")
    try:
        im.load()
    except OSError as e:
        raise BadSample(_reason(e), str(e)) from None
    except (ValueError, SyntaxError, EOFError, TypeError, IndexError, MemoryError,
            Image.DecompressionBombError) as e:
        raise BadSample("decode_error", f"{type(e).__name__}: {e}") from None
    return im


def _reason(e: Exception) -> str:
    msg = str(e).lower()
    return "truncated" if "truncat" in msg or "broken data stream" in msg else "decode_error"


def to_rgb(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. High bit depths are scaled (not clipped); alpha is composited."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)  # (H, W)
        # 16-bit data (all PNG/TIFF greyscale we meet) maps 0..65535 -> 0..255; larger ints are min-max scaled.
        top = 65535.0 if arr.size == 0 or arr.max() <= 65535 and arr.min() >= 0 else None
        if top is None:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / max(hi - lo, 1.0) * 255.0
        else:
            arr = arr / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        # Float images are usually 0..1 or 0..255; pick by range.
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        grey = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")
