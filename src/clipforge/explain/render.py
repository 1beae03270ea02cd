"""Drawing maps: a heat overlay on an image, and the explain figure (one panel per text, with a legend).

Colours come from a small built-in ramp (dark blue -> cyan -> yellow -> red, like matplotlib's "turbo"'s
middle), so drawing needs Pillow and numpy only. Each panel's colours span its own map's minimum to maximum;
the legend under each panel gives those two values, so panels stay comparable by their numbers. Texts pass
through `clipforge.data.display.shown` (one printable line each). The PNG carries a clipforge mark
(`EXPLAIN_KIND`): a rerun may replace its own figure, any other file needs `overwrite`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from clipforge.atomic import atomic_write
from clipforge.data.display import shown
from clipforge.encode.images import ImageInput, open_image
from clipforge.explain.maps import Explanation
from clipforge.output_dirs import PNG_MARK_KEY, OutputFile, png_marked

__all__ = ["EXPLAIN_KIND", "colorize", "draw_text", "heat_overlay", "render_explanation", "explain_output"]

EXPLAIN_KIND = "explain-map"
_RAMP = np.array([[48, 18, 59], [50, 100, 230], [30, 200, 220], [120, 250, 90], [250, 210, 40], [240, 90, 20],
                  [122, 4, 3]], dtype=np.float32)
_BG, _FG, _DIM = (255, 255, 255), (20, 20, 20), (110, 110, 110)


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in 0..1 -> (H, W, 3) uint8 colours of the ramp."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).astype(np.uint8)


def _unit(m: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(np.min(m)), float(np.max(m))
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m), lo, hi


def heat_overlay(image: Image.Image, grid_map: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`image` with `grid_map` (h, w; any scale) upsampled over it, min-max coloured, blended by `alpha`."""
    image = image.convert("RGB")
    unit, _, _ = _unit(np.asarray(grid_map, dtype=np.float32))
    small = Image.fromarray((unit * 255).astype(np.uint8), mode="L")
    up = np.asarray(small.resize(image.size, Image.BILINEAR), dtype=np.float32) / 255.0
    return Image.blend(image, Image.fromarray(colorize(up)), alpha)


def draw_text(draw, xy, text: str, fill, font) -> None:
    """`draw.text`, in Latin-1 where Pillow has no FreeType (its bitmap font draws nothing else)."""
    try:
        draw.text(xy, text, fill=fill, font=font)
    except UnicodeEncodeError:  # Pillow without FreeType: its bitmap font draws Latin-1 only
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), fill=fill, font=font)


def explain_output(overwrite: bool = False, param: str = "out_path") -> OutputFile:
    """The output rule of an explain figure (vet it before the model loads)."""
    return OutputFile(overwrite=overwrite, param=param, owned=png_marked(EXPLAIN_KIND))


def render_explanation(image: ImageInput, explanation: Explanation, out_path: str | Path | None = None, *,
                       panel: int = 256, cols: int = 4, alpha: float = 0.5, overwrite: bool = False,
                       title: Optional[str] = None) -> Image.Image:
    """The figure: the image, then one overlaid panel per text, each titled with its text and pooled cosine,
    with a colour bar giving its map's min and max. Saved as PNG (atomically) when `out_path` is given; an
    existing file there is replaced only if it is an earlier explain figure, or with `overwrite`."""
    output = explain_output(overwrite)
    if out_path is not None:
        output.vet(out_path)
    img = open_image(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    scale = panel / max(img.size)  # small images are enlarged too: a 32-px digit becomes readable
    shown_img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    w, h = shown_img.size
    font, line_h, pad, bar_h = ImageFont.load_default(), 12, 8, 10
    chars = max(8, w // 6)
    n = 1 + len(explanation.texts)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    top = line_h + pad if title else 0
    cell_w, cell_h = w + pad, line_h * 2 + h + bar_h + line_h + pad * 2
    sheet = Image.new("RGB", (pad + cols * cell_w, pad + top + rows * cell_h), _BG)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw_text(draw, (pad, pad), shown(title)[: (sheet.width - 2 * pad) // 6], _FG, font)
    for k in range(n):
        x, y = pad + (k % cols) * cell_w, pad + top + (k // cols) * cell_h
        if k == 0:
            draw_text(draw, (x, y), "image", _FG, font)
            draw_text(draw, (x, y + line_h), f"{explanation.method}, grid {explanation.maps.shape[1]}x"
                                         f"{explanation.maps.shape[2]}"[:chars], _DIM, font)
            sheet.paste(shown_img, (x, y + 2 * line_h))
            continue
        t = k - 1
        draw_text(draw, (x, y), shown(explanation.texts[t])[:chars], _FG, font)
        draw_text(draw, (x, y + line_h), f"pooled cos {float(explanation.scores[t]):.3f}", _DIM, font)
        sheet.paste(heat_overlay(shown_img, explanation.maps[t], alpha), (x, y + 2 * line_h))
        _, lo, hi = _unit(explanation.maps[t])
        by = y + 2 * line_h + h + 4
        ramp = colorize(np.tile(np.linspace(0, 1, w, dtype=np.float32), (bar_h, 1)))
        sheet.paste(Image.fromarray(ramp), (x, by))
        draw_text(draw, (x, by + bar_h + 1), f"{lo:.3f}", _DIM, font)
        hi_s = f"{hi:.3f}"
        draw_text(draw, (x + w - 6 * len(hi_s), by + bar_h + 1), hi_s, _DIM, font)
    if out_path is not None:
        info = PngInfo()
        info.add_text(PNG_MARK_KEY, EXPLAIN_KIND)
        atomic_write(out_path, lambda f: sheet.save(f, format="PNG", pnginfo=info), output=output)
    return sheet
