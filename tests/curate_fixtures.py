"""Builders of small pair collections for the curation tests: digits with planted copies and broken files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


def digits_rows(digits_demo: dict, n: int) -> list[dict]:
    """The first n training rows of the digits demo, with absolute image paths."""
    root = Path(digits_demo["root"])
    rows = [json.loads(x) for x in Path(digits_demo["train_manifest"]).read_text().splitlines()[:n]]
    for r in rows:
        r["image"] = str(root / r["image"])
    return rows


def plant_copies(rows: list[dict], out: Path, kinds=("bytes", "pixels", "upscale", "jpeg")) -> list[dict]:
    """One copy of rows[k] per kind (k = 0, 1, ...): returns the copy rows ({"id", "image", "captions", "label",
    "_of", "_kind"}). bytes: the same file; pixels: PNG re-saved with other compression and a text chunk;
    upscale: x1.5 bicubic; downscale: x0.75 Lanczos; jpeg: quality 90; shift: moved one pixel right (32-pixel
    digits: 3% of the side), the column moved in black."""
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for k, kind in enumerate(kinds):
        src = rows[k]
        im = Image.open(src["image"])
        dst = out / f"copy-{k}.{'jpg' if kind == 'jpeg' else 'png'}"
        if kind == "bytes":
            shutil.copyfile(src["image"], dst)
        elif kind == "pixels":
            info = PngImagePlugin.PngInfo()
            info.add_text("comment", "re-saved")
            im.save(dst, compress_level=1, pnginfo=info)
        elif kind == "upscale":
            im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.BICUBIC).save(dst)
        elif kind == "downscale":
            im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.LANCZOS).save(dst)
        elif kind == "jpeg":
            im.convert("L" if im.mode in ("L", "I", "I;16") else "RGB").save(dst, quality=90)
        elif kind == "shift":
            arr = np.asarray(im)
            moved = np.zeros_like(arr)
            moved[:, 1:] = arr[:, :-1]
            Image.fromarray(moved).save(dst)
        else:
            raise ValueError(kind)
        copies.append({"id": f"copy-{k}", "image": str(dst), "captions": list(src["captions"]),
                       "label": src.get("label"), "_of": src["id"], "_kind": kind})
    return copies


def write_manifest(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in rows))
    return f"jsonl:{path}"


def broken_rows(out: Path) -> list[dict]:
    """A truncated PNG, a file that is not an image, and a readable image without a caption."""
    out.mkdir(parents=True, exist_ok=True)
    arr = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    Image.fromarray(arr).save(out / "ok.png")
    data = (out / "ok.png").read_bytes()
    (out / "truncated.png").write_bytes(data[: len(data) // 2])
    (out / "text.png").write_text("not an image")
    return [{"id": "truncated", "image": str(out / "truncated.png"), "captions": ["a broken file"]},
            {"id": "not-image", "image": str(out / "text.png"), "captions": ["a text file"]},
            {"id": "uncaptioned", "image": str(out / "ok.png"), "captions": []}]
