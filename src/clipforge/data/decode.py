"""Safe image decoding and the counter that records what was skipped and why.

Every reader funnels its bytes through `decode_image`, which either returns an RGB `PIL.Image` with its EXIF
orientation applied or raises `BadSample(reason)`. Callers that walk a whole collection catch `BadSample`,
add it to a `SkipCounter`, and carry on: a long job never dies on one bad file, and never drops one silently.

Reasons are short fixed strings so reports can be grouped and compared across runs:
  missing_file, unreadable, not_a_file (a FIFO, socket, device or directory under an image's name),
  empty_file, not_an_image, truncated, too_large (over the file-size cap, the pixel limit, or the decoded-memory
  budget), bad_size, unsupported_mode, decode_error, no_image (a record without any image payload), bad_record
  (a manifest row / tar member that cannot be parsed), no_caption / no_label (the training / eval loader needs
  one), remote_url (an http(s) path: fetch collections first, e.g. with img2dataset), member_too_large (a
  tar member over the reader's size cap, refused from its header, never read), shard_truncated (a tar
  shard that ends early: counted once for the shard, every whole sample before the cut still read).

Memory is bounded by what decoding holds, not by the file's size: a 172 KB PNG can hold 9400 x 9400 16-bit
pixels. Before any pixel is decoded, `decode_bytes` prices the image from its header (Pillow's mode and size,
plus the codec's own buffers) and `decode_image` refuses it as `too_large` when that is over
`DecodeOptions.max_decoded_bytes`; high bit depths and alpha are brought to 8-bit RGB tile by tile, so only the
decoded pixels and the RGB result are ever whole-image sized.
"""
from __future__ import annotations

import io
import numbers
import os
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipforge.data.fs import DEFAULT_MAX_FILE_BYTES, FileRefused, read_regular
from clipforge.errors import UsageError

# 89.5 Mpx is Pillow's own default bomb limit; a collection can raise or lower it per reader.
DEFAULT_MAX_PIXELS = 89_478_485
# The most memory one decode may hold at its peak (see `decode_bytes`). 512 MiB admits every baseline JPEG up to
# the pixel limit (4 bytes a pixel) and a 9400 x 9400 16-bit greyscale PNG (2 decoded + 4 RGB), and keeps a
# whole command (torch, a model, one image at a time) well under 1.5 GB.
DEFAULT_MAX_DECODED_BYTES = 512 * 2**20

# Bytes a pixel takes in Pillow's memory, by mode: RGB is stored padded to 4 bytes, "1" as a byte a pixel.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_OTHER_MODE_BYTES = 4  # RGB, RGBA, LA, PA, CMYK, YCbCr, LAB, HSV, I, F, ...
_RGB_BYTES = 4
# Codec buffers beyond the image itself, bytes a pixel (measured with Pillow 13: libwebp and OpenJPEG decode
# into buffers of their own that Pillow then copies).
_CODEC_BYTES = {"WEBP": 13, "JPEG2000": 16}
_TILE_PIXELS = 1 << 16  # the unit of the 8-bit conversion, whatever the image size
_TILE_BYTES = 64  # a tile pixel's share of what converting it holds besides input and result (float64 copies)
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

REASONS = (
    "missing_file", "unreadable", "not_a_file", "empty_file", "not_an_image", "truncated", "too_large", "bad_size",
    "unsupported_mode", "decode_error", "no_image", "bad_record", "remote_url",
    "no_caption", "no_label", "not_reinforced", "reinforcement_mismatch", "member_too_large", "shard_truncated",
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
    max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES  # peak memory of one decode; None: no limit
    # (w, h): a JPEG at least twice this size is decoded at a reduced scale (1/2 .. 1/8) no smaller than it,
    # for callers that only need thumbnails or model-sized inputs. None: full size.
    draft_size: tuple[int, int] | None = None

    def __post_init__(self):
        for name in ("max_pixels", "max_decoded_bytes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1):
                what = "pixels" if name == "max_pixels" else "bytes"
                raise UsageError(f"`{name}` must be a positive number of {what} or None, got {v!r}")
        d = self.draft_size
        if d is not None and not (isinstance(d, (tuple, list)) and len(d) == 2 and all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in d)):
            raise UsageError(f"`draft_size` must be a (width, height) pair of positive integers or None, got {d!r}")


def mode_bytes(mode: str) -> int:
    """Bytes a pixel of this Pillow mode takes in memory."""
    return _MODE_BYTES.get(mode, _OTHER_MODE_BYTES)


def _codec_bytes(im: Image.Image, pixels: int) -> int:
    """Bytes the codec holds while decoding `im` (opened, not loaded), beyond the image itself."""
    if im.format == "JPEG" and (im.info.get("progressive") or im.info.get("progression")):
        # Progressive JPEG keeps every DCT coefficient of the whole image (2 bytes each, at full scale even
        # when drafted): 2 bytes a pixel for each component, less for subsampled chroma.
        layers = [t for t in (getattr(im, "layer", None) or []) if len(t) >= 3]
        try:
            hmax, vmax = max(int(t[1]) for t in layers), max(int(t[2]) for t in layers)
            share = sum(int(t[1]) * int(t[2]) for t in layers) / (hmax * vmax)
        except (ValueError, TypeError, ZeroDivisionError):
            share = float(len(im.getbands()))
        return int(2 * share * pixels)
    return _CODEC_BYTES.get(im.format or "", 0) * pixels


def decode_bytes(mode: str, size: tuple[int, int], *, codec_bytes: int = 0, turned: bool = False) -> int:
    """Peak bytes `decode_image` holds for an image of this Pillow mode and (w, h): the decoded pixels plus
    `codec_bytes` while loading, the turned copy when EXIF orientation turns it, and the decoded pixels plus
    the 8-bit RGB result while converting (the conversion works tile by tile: a few MB besides). The input
    bytes themselves are the caller's and are not counted."""
    w, h = size
    pixels = int(w) * int(h)
    raw = pixels * mode_bytes(mode)
    peak = raw + int(codec_bytes)
    if turned:
        peak = max(peak, 2 * raw)
    if mode != "RGB":
        peak = max(peak, raw + pixels * _RGB_BYTES + min(pixels, _TILE_PIXELS) * _TILE_BYTES)
    return peak


def _mib(n: int) -> str:
    return f"{n / 2**20:.{0 if n >= 10 * 2**20 else 1}f} MiB"


def _check_budget(im: Image.Image, opts: "DecodeOptions", *, codec_bytes: int = 0, turned: bool = False) -> None:
    if opts.max_decoded_bytes is None:
        return
    need = decode_bytes(im.mode, im.size, codec_bytes=codec_bytes, turned=turned)
    if need > opts.max_decoded_bytes:
        w, h = im.size
        raise BadSample("too_large", f"{w}x{h} {im.mode}{' turned by EXIF' if turned else ''} needs {_mib(need)} "
                                     f"to decode > `max_decoded_bytes` {opts.max_decoded_bytes} "
                                     f"({_mib(opts.max_decoded_bytes)})")


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
            im, orig_mode = _open_and_load(data, opts)
            if opts.apply_exif and 2 <= _orientation(im) <= 8:  # an orientation only loading found (PNG eXIf)
                _check_budget(im, opts, turned=True)  # the turn holds two copies of the decoded pixels
            try:
                if opts.apply_exif:
                    ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
                rgb = to_rgb(im, opts.background)
            except Exception as e:  # noqa: BLE001 - any conversion failure is a bad sample, not a crash
                raise BadSample("unsupported_mode", f"{orig_mode}: {e}") from None
            if rgb is im:  # a plain image on the same pixels: the opened file object would keep `data` alive
                rgb = im._new(im.im)
            del im  # only the RGB result outlives the call
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    rgb.info["orig_mode"] = orig_mode
    return rgb


def _orientation(im: Image.Image) -> int:
    """EXIF orientation of a loaded image (1: upright, also when the EXIF block cannot be read); 2..8 turn it."""
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: `exif_transpose` decides what becomes of it
        return 1


def _header_orientation(im: Image.Image) -> int:
    """EXIF orientation as far as the header tells it, without loading (`getexif` loads a PNG to look for a late
    eXIf chunk, and caches what it found): JPEG, WEBP and PNG EXIF blocks read at open, TIFF tags."""
    try:
        if im.info.get("exif"):
            exif = Image.Exif()
            exif.load(im.info["exif"])
            return int(exif.get(0x0112, 1) or 1)
        tags = getattr(im, "tag_v2", None)
        return int(tags.get(0x0112, 1) or 1) if tags is not None else 1
    except Exception:  # noqa: BLE001 - unreadable EXIF: as upright here; `exif_transpose` decides later
        return 1


def _open_and_load(data: bytes, opts: DecodeOptions) -> tuple[Image.Image, str]:
    """(loaded image, its mode as stored). Size, pixel and memory limits are checked from the header first."""
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
    orig_mode = im.mode
    codec = _codec_bytes(im, w * h)  # progressive JPEG coefficients stay full scale when drafted
    if opts.draft_size is not None and im.format == "JPEG":
        try:
            im.draft(im.mode, tuple(int(v) for v in opts.draft_size))  # decode at 1/2 .. 1/8 scale
        except (OSError, ValueError, TypeError) as e:
            raise BadSample("decode_error", f"{type(e).__name__}: {e}") from None
    # the turn is priced now where the header tells it, so an image refused for turning is never decoded
    _check_budget(im, opts, codec_bytes=codec, turned=opts.apply_exif and 2 <= _header_orientation(im) <= 8)
    try:
        im.load()
    except OSError as e:
        raise BadSample(_reason(e), str(e)) from None
    except (ValueError, SyntaxError, EOFError, TypeError, IndexError, MemoryError,
            Image.DecompressionBombError) as e:
        raise BadSample("decode_error", f"{type(e).__name__}: {e}") from None
    return im, orig_mode


def _reason(e: Exception) -> str:
    msg = str(e).lower()
    return "truncated" if "truncat" in msg or "broken data stream" in msg else "decode_error"


def to_rgb(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. High bit depths are scaled (not clipped); alpha is composited.

    High-bit-depth and alpha images are converted tile by tile into one RGB image, so the conversion holds the
    input and the result and a few MB besides, never float copies of the whole image."""
    mode = im.mode
    if mode == "RGB":
        return im
    if im.width == 0 or im.height == 0:
        return Image.new("RGB", im.size)
    if mode in _INT_MODES:
        return _by_tiles(im, _int_to_rgb(im))
    if mode == "F":
        return _by_tiles(im, _float_to_rgb(im))
    if mode in _ALPHA_MODES or mode == "P" and "transparency" in im.info:
        bg = tuple(int(v) for v in background) + (255,)
        return _by_tiles(im, lambda tile: _composite(tile, bg))
    return im.convert("RGB")


def _tiles(im: Image.Image):
    """Boxes covering `im` in row-major order, each at most `_TILE_PIXELS` pixels."""
    w, h = im.size
    tw = min(w, _TILE_PIXELS)
    th = max(1, _TILE_PIXELS // tw)
    for y in range(0, h, th):
        for x in range(0, w, tw):
            yield x, y, min(w, x + tw), min(h, y + th)


def _by_tiles(im: Image.Image, convert) -> Image.Image:
    out = Image.new("RGB", im.size)
    for box in _tiles(im):
        out.paste(convert(im.crop(box)), box[:2])
    return out


def _grey(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).convert("RGB")


def _int_to_rgb(im: Image.Image):
    """Tile converter for integer modes: 16-bit data (all PNG/TIFF greyscale we meet) maps 0..65535 -> 0..255;
    wider integers are min-max scaled over the whole image."""
    lo, hi = (0, 65535) if im.mode != "I" else im.getextrema()
    if lo >= 0 and hi <= 65535:
        # round(v / 257) in integers: v / 257 is never exactly k + 1/2, so this is exact
        return lambda tile: _grey((np.asarray(tile).astype(np.uint32) + 128) // 257)
    span = max(float(hi) - float(lo), 1.0)

    def convert(tile):
        arr = (np.asarray(tile).astype(np.float64) - float(lo)) / span * 255.0
        return _grey(np.clip(np.rint(arr), 0, 255))
    return convert


def _float_to_rgb(im: Image.Image):
    """Tile converter for float images: usually 0..1 or 0..255, picked by the range of the finite values."""
    top = None
    for box in _tiles(im):
        arr = np.asarray(im.crop(box))
        finite = arr[np.isfinite(arr)]
        if finite.size:
            m = float(finite.max())
            top = m if top is None else max(top, m)
    scale = 255.0 if top is not None and top <= 1.0 else 1.0

    def convert(tile):
        with np.errstate(over="ignore"):  # +-inf (as the largest float) times 255 overflows, then clips
            return _grey(np.clip(np.rint(np.nan_to_num(np.asarray(tile, dtype=np.float64)) * scale), 0, 255))
    return convert


def _composite(tile: Image.Image, background: tuple) -> Image.Image:
    rgba = tile.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert("RGB")
