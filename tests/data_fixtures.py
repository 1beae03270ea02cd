"""Builders of small on-disk collections for the data-layer tests (good, bad and awkward image files)."""
from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image


def pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 with smooth structure (compresses well, survives JPEG roughly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h - 2, 1)], -1)
    return np.clip(base + rng.integers(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A 40x20 JPEG (left half red, right half blue) tagged EXIF orientation 6, and the expected upright
    (40, 20, 3) pixels: orientation 6 means 'rotate 90 degrees clockwise to display'."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    expected = np.rot90(arr, k=-1)  # numpy's k=-1 is clockwise, computed without Pillow
    return encode(img, "JPEG", quality=95, exif=exif), expected


def bomb_png() -> bytes:
    """A genuine 10000x10000 1-bit PNG (100 Mpx > Pillow's 89.5 Mpx limit) that is only ~12 KB on disk."""
    return encode(Image.new("1", (10_000, 10_000)), "PNG")


def make_mixed_folder(root: str) -> dict:
    """Write the acceptance folder; return {filename: expected reason or None for good files}."""
    os.makedirs(root, exist_ok=True)
    files: dict[str, bytes] = {}
    files["good.jpg"] = encode(Image.fromarray(pattern(48, 32, 1)), "JPEG", quality=92)
    files["good.png"] = encode(Image.fromarray(pattern(33, 21, 2)), "PNG")
    files["good.webp"] = encode(Image.fromarray(pattern(30, 30, 3)), "WEBP", lossless=True)
    jpg = encode(Image.fromarray(pattern(64, 64, 4)), "JPEG", quality=90)
    files["truncated.jpg"] = jpg[: len(jpg) // 2]
    files["text.jpg"] = b"this is not an image, just text with a .jpg name\n"
    files["bomb.png"] = bomb_png()
    files["cmyk.jpg"] = encode(Image.new("CMYK", (16, 12), (0, 255, 255, 0)), "JPEG", quality=95)  # red
    sixteen = (np.arange(20 * 10, dtype=np.uint32).reshape(10, 20) * 300).astype(np.uint16)  # up to 59700
    files["sixteen.png"] = encode(Image.fromarray(sixteen), "PNG")
    files["rotated.jpg"], _ = exif_rotated_jpeg()
    files["grey.png"] = encode(Image.fromarray(pattern(10, 10, 5)[..., 0]), "PNG")
    pal = Image.fromarray(pattern(12, 12, 6)).convert("P")
    files["palette.png"] = encode(pal, "PNG")
    rgba = np.dstack([pattern(8, 8, 7), np.full((8, 8), 0, np.uint8)])  # fully transparent -> background
    files["rgba.png"] = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    files["empty.png"] = b""
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    bad = {"truncated.jpg": "truncated", "text.jpg": "not_an_image", "bomb.png": "too_large",
           "empty.png": "empty_file"}
    return {name: bad.get(name) for name in files}


def make_pair_folder(root: str, n: int = 12, size: int = 16, captions: int = 2) -> list[dict]:
    """A files-layout folder: img_XX.png + img_XX.txt (one caption per line) + img_XX.json for some."""
    os.makedirs(root, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"img.{i:02d}.png" if i % 5 == 0 else f"img_{i:02d}.png"  # ids with dots, too
        Image.fromarray(pattern(size, size, 100 + i)).save(os.path.join(root, name))
        caps = [f"picture {i} caption {j}" for j in range(1 + (i % captions))]
        stem = os.path.splitext(name)[0]
        with open(os.path.join(root, stem + ".txt"), "w") as f:
            f.write("\n".join(caps) + "\n")
        if i % 3 == 0:
            with open(os.path.join(root, stem + ".json"), "w") as f:
                json.dump({"label": i % 4, "source": "test"}, f)
        rows.append({"id": name, "captions": caps, "label": (i % 4) if i % 3 == 0 else None})
    return rows
