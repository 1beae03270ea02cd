"""Hostile images for the decoded-memory budget (reliability issue): small files whose pixels are not small.

Each generator writes one file and returns its path. The big ones are written without ever holding their pixels:
`png` builds the PNG stream by hand, the first row filtered "None" and every later row filtered "Up" with zero
differences (so every row repeats the first), and the compressed stream of a block of such rows is repeated
after a full flush, so a 9400 x 9400 16-bit image costs a fraction of a second and ~200 KB of disk.

  png16_near_limit      9400 x 9400 16-bit greyscale: under the pixel limit and just under the default budget
  rgba_png              8-bit RGBA (the largest decode per pixel among PNGs: the RGBA pixels plus the RGB result)
  bomb_png_over_limit   a genuine 1-bit PNG over the pixel limit (refused from the header)
  claimed_png           a header (and a scrap of data) claiming any size: refused before any pixel is decoded
  progressive_jpeg      a large progressive JPEG (libjpeg keeps every DCT coefficient of the image)
  exif_rotated_jpeg     a large JPEG tagged EXIF orientation 6 (turning holds two copies)
  webp_image            a large WEBP (libwebp decodes into buffers of its own)
  palette_transparency  P-mode PNGs with a transparent index and with per-entry alpha
  float_tiff            an F-mode TIFF holding NaN, +inf, -inf and 0..1 values
  zero_width_png        a PNG whose header says width 0

`fuzz_input_*` functions write the worst of these as `image__what.ext` into a folder, for the child process of
tests/test_fuzz_readers.py, which reads each through a `files:` source under the 1.5 GB peak-RSS budget.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

NEAR_LIMIT_SIDE = 9400  # 88.4 Mpx: under Pillow's 89.5 Mpx limit; 2 + 4 bytes a pixel = 505 MiB < 512 MiB
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples a pixel


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_row(width: int, depth: int = 8, colour: int = 0, seed: int = 0) -> bytes:
    """A deterministic row of samples covering the whole range of the depth (big-endian, as PNG stores them)."""
    n = width * _CHANNELS[colour]
    rng = np.random.default_rng(seed)
    if depth == 16:
        return (np.linspace(0, 65535, n).astype(np.uint32) ^ rng.integers(0, 256, n)).astype(">u2").tobytes()
    if depth == 8:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return rng.integers(0, 256, -(-n * depth // 8), dtype=np.uint8).tobytes()


def png_stream(width: int, height: int, depth: int = 8, colour: int = 0, row: bytes | None = None,
               *, chunks: tuple[tuple[bytes, bytes], ...] = (), data: bool = True) -> bytes:
    """PNG bytes of an image whose every row is `row` (default `png_row`). `chunks` (type, body) go before the
    image data (PLTE, tRNS, eXIf); `data=False` writes a few bytes of image data only: a header that claims."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    head += b"".join(_chunk(k, v) for k, v in chunks)
    if not data:
        return head + _chunk(b"IDAT", zlib.compress(bytes(65))) + _chunk(b"IEND", b"")
    rowbytes = -(-width * _CHANNELS[colour] * depth // 8)
    row = png_row(width, depth, colour) if row is None else row
    assert len(row) == rowbytes, (len(row), rowbytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: header and checksum written here
    first = b"\x00" + row
    parts = [comp.compress(first) + comp.flush(zlib.Z_FULL_FLUSH)]
    adler = zlib.adler32(first)
    rest = height - 1
    per_block = max(1, min(rest, (1 << 22) // (rowbytes + 1)))
    block = (b"\x02" + bytes(rowbytes)) * per_block
    if rest >= per_block:
        parts.append(comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH))
        once = parts.pop()  # after a full flush the same input compresses to the same bytes: repeat them
        for _ in range(rest // per_block):
            parts.append(once)
            adler = zlib.adler32(block, adler)
    tail = (b"\x02" + bytes(rowbytes)) * (rest % per_block)
    parts.append(comp.compress(tail) + comp.flush())
    adler = zlib.adler32(tail, adler)
    body = b"\x78\xda" + b"".join(parts) + struct.pack(">I", adler & 0xFFFFFFFF)
    idat = b"".join(_chunk(b"IDAT", body[i:i + (1 << 20)]) for i in range(0, len(body), 1 << 20))
    return head + idat + _chunk(b"IEND", b"")


def _write(path, data: bytes) -> Path:
    path = Path(path)
    path.write_bytes(data)
    return path


def png16_near_limit(path, side: int = NEAR_LIMIT_SIDE) -> Path:
    """`side` x `side` 16-bit greyscale (Pillow mode I;16), every row `png_row(side, 16)`."""
    return _write(path, png_stream(side, side, 16, 0))


def rgba_png(path, width: int, height: int) -> Path:
    """8-bit RGBA, every row `png_row(width, 8, 6)` (alpha anywhere in 0..255)."""
    return _write(path, png_stream(width, height, 8, 6))


def bomb_png_over_limit(path, side: int = 10_000) -> Path:
    """A genuine 1-bit `side` x `side` PNG (100 Mpx > the 89.5 Mpx limit), a few KB on disk."""
    return _write(path, png_stream(side, side, 1, 0, row=bytes(-(-side // 8))))


def claimed_png(path, width: int, height: int, depth: int = 8, colour: int = 6) -> Path:
    """A ~100-byte PNG whose header claims `width` x `height` (its data ends after one row's start)."""
    return _write(path, png_stream(width, height, depth, colour, data=False))


def zero_width_png(path) -> Path:
    """A PNG whose header says 0 x 16 (PNG requires both sides >= 1)."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0))
    return _write(path, head + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))


def stripes(width: int, height: int) -> Image.Image:
    """RGB with structure in both directions (so a wrong turn or a shifted tile shows) that JPEG and WEBP
    compress well, built from broadcasts cheap enough for tens of megapixels."""
    cols = (np.arange(width, dtype=np.uint32)[None, :, None] * np.array([3, 5, 7], np.uint32)) % 192
    rows = (np.arange(height, dtype=np.uint32)[:, None, None] * 2) % 64
    return Image.fromarray((cols + rows).astype(np.uint8))


def progressive_jpeg(path, width: int, height: int, subsampling: int = 2, quality: int = 60) -> Path:
    """A progressive JPEG (`subsampling` 0: 4:4:4, 2: 4:2:0)."""
    stripes(width, height).save(path, "JPEG", progressive=True, quality=quality, subsampling=subsampling)
    return Path(path)


def exif_rotated_jpeg(path, width: int, height: int, orientation: int = 6, mode: str = "RGB") -> Path:
    """A baseline JPEG tagged EXIF `orientation` (6: turn 90 degrees clockwise to display)."""
    img = stripes(width, height)
    img = img if mode == "RGB" else img.convert(mode)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", quality=60, exif=exif)
    return Path(path)


def webp_image(path, width: int, height: int) -> Path:
    """A lossy WEBP, encoded at libwebp's fastest setting."""
    stripes(width, height).save(path, "WEBP", quality=50, method=0)
    return Path(path)


def palette_transparency(path, per_entry_alpha: bool = False, size=(37, 23), seed: int = 0) -> Path:
    """A P-mode PNG: one transparent index (tRNS as `transparency` int), or an alpha per palette entry."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 16, (size[1], size[0]), dtype=np.uint8), "P")
    im.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tobytes())
    if per_entry_alpha:
        im.save(path, "PNG", transparency=bytes(rng.integers(0, 256, 16, dtype=np.uint8)))
    else:
        im.save(path, "PNG", transparency=3)
    return Path(path)


def float_tiff(path, size=(29, 17), seed: int = 0, top: float = 1.0) -> Path:
    """An F-mode (float32) TIFF of values in 0..`top`, with NaN, +inf and -inf scattered through it."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0])) * top).astype(np.float32)
    flat = arr.reshape(-1)
    flat[::7], flat[3::11], flat[5::13] = np.nan, np.inf, -np.inf
    Image.fromarray(arr, "F").save(path, "TIFF")
    return Path(path)


# -- worst cases for the fuzz harness's memory-budget child ------------------------------------------------

def fuzz_input_near_limit_images(d: Path) -> list[Path]:
    """Images that fit the pixel limit and the decoded-memory budget, at (or near) their most expensive."""
    d = Path(d)
    return [png16_near_limit(d / "image__png16_near_limit.png"),
            rgba_png(d / "image__rgba_large.png", 6000, 6000),
            progressive_jpeg(d / "image__progressive_large.jpg", 4000, 3000, subsampling=0),
            exif_rotated_jpeg(d / "image__exif_rotated_large.jpg", 4000, 3000)]


def fuzz_input_refused_images(d: Path) -> list[Path]:
    """Images refused from their header: over the pixel limit, over the budget, absurd or empty sizes."""
    d = Path(d)
    return [bomb_png_over_limit(d / "image__bomb_over_pixel_limit.png"),
            claimed_png(d / "image__claims_2g_by_2g.png", 2**31 - 1, 2**31 - 1),
            claimed_png(d / "image__claims_over_budget.png", 8200, 8200),  # under the pixel limit
            zero_width_png(d / "image__zero_width.png")]


def fuzz_input_awkward_modes(d: Path) -> list[Path]:
    """Small images in the modes the 8-bit conversion handles tile by tile."""
    d = Path(d)
    return [palette_transparency(d / "image__palette_trns_index.png"),
            palette_transparency(d / "image__palette_trns_alpha.png", per_entry_alpha=True),
            float_tiff(d / "image__float_nan_inf.tif")]
