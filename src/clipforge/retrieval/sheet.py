"""Contact sheet: one PNG showing the hits of a search as a grid of thumbnails with rank, score and caption.

Labels (captions, keys, the title) pass through `clipforge.data.display.shown`: a newline in a caption cannot
start a line of its own, nor a control character reach the PNG raw. Images are read with the library's decoder
(regular files only, the pixel limit and the decoded-memory budget, EXIF orientation; JPEGs at reduced size).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from clipforge.atomic import atomic_write
from clipforge.data.decode import BadSample, DecodeOptions, decode_image, read_bytes
from clipforge.data.display import shown
from clipforge.explain.render import draw_text as _text, heat_overlay
from clipforge.output_dirs import PNG_MARK_KEY, OutputFile, png_marked

_BG, _FG, _DIM, _MISSING = (255, 255, 255), (20, 20, 20), (110, 110, 110), (225, 225, 225)
_THUMB_DECODE = DecodeOptions(draft_size=(512, 512))  # JPEG: decode at reduced size, thumbnails need no more
SHEET_KIND = "contact-sheet"  # the PNG's clipforge tEXt mark: a rerun may replace its own sheet


def _field(hit: Any, name: str, default=None):
    """Read a field from a Hit (attribute or metadata) or a plain dict."""
    if isinstance(hit, dict):
        return hit.get(name, default)
    if hasattr(hit, name):
        return getattr(hit, name)
    return getattr(hit, "metadata", {}).get(name, default)


def _default_loader(hit: Any) -> Image.Image | None:
    for col in ("path", "image_path"):
        p = _field(hit, col)
        if p:
            try:  # regular files only (a FIFO would block), under the decoder's size cap and memory budget
                return decode_image(read_bytes(p), _THUMB_DECODE)
            except BadSample:
                return None  # unreadable file: a grey tile, never a crash
    return None


def contact_sheet(hits: Sequence[Any], out_path: str | Path | None = None, thumb: int = 160, cols: int = 5,
                  caption_lines: int = 2, title: str | None = None,
                  load: Callable[[Any], Image.Image | None] = _default_loader,
                  overwrite: bool = False, heatmaps: Optional[Mapping[Any, np.ndarray]] = None,
                  alpha: float = 0.5) -> Image.Image:
    """Render hits (Hit objects or dicts with rank/id/score and path/caption) as a grid; save as PNG if
    out_path is given (atomically). load(hit) returns the image or None (drawn as a grey tile).
    An existing file at `out_path` is replaced only if it is an earlier contact sheet, or with `overwrite`;
    a folder, link, device or FIFO there is always refused (`output_dirs`). `heatmaps`: hit id -> (h, w) map
    (`clipforge.explain.heatmaps`) drawn over that hit's thumbnail, min-max coloured, blended by `alpha`; the
    hit's line then ends in "map"."""
    output = OutputFile(overwrite=overwrite, param="out_path", owned=png_marked(SHEET_KIND))
    if out_path is not None:
        output.vet(out_path)  # before any image is loaded
    font = ImageFont.load_default()
    line_h = 12
    chars = max(8, thumb // 6)  # the default bitmap font is ~6 px per character
    cols = max(1, min(cols, len(hits) or 1))
    rows = max(1, -(-len(hits) // cols))
    pad, text_h = 8, line_h * (1 + caption_lines)
    top = line_h + pad if title else 0
    cell_w, cell_h = thumb + pad, thumb + text_h + pad
    sheet = Image.new("RGB", (pad + cols * cell_w, pad + top + rows * cell_h), _BG)
    draw = ImageDraw.Draw(sheet)
    if title:
        _text(draw, (pad, pad), shown(title)[: (sheet.width - 2 * pad) // 6], _FG, font)
    if not hits:
        draw.text((pad, pad + top), "no results", fill=_DIM, font=font)
    for n, hit in enumerate(hits):
        x = pad + (n % cols) * cell_w
        y = pad + top + (n // cols) * cell_h
        img = load(hit)
        if img is None:
            draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill=_MISSING)
            draw.text((x + 4, y + thumb // 2 - 6), "no image", fill=_DIM, font=font)
        else:
            hid = _field(hit, "id")
            img = heat_overlay(img, heatmaps[hid], alpha) if heatmaps and hid in heatmaps else img.copy()
            img.thumbnail((thumb, thumb))
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        rank, score = _field(hit, "rank", n), _field(hit, "score")
        head = (f"#{rank + 1}" + (f"  {score:.3f}" if score is not None else "")
                + f"  id {shown(_field(hit, 'id', '?'))}" + ("  map" if heatmaps and _field(hit, "id") in heatmaps
                                                             else ""))
        _text(draw, (x, y + thumb + 2), head[:chars], _FG, font)
        caption = shown(_field(hit, "caption") or _field(hit, "key") or "")  # one line of printable text
        for i, line in enumerate(textwrap.wrap(caption, chars)[:caption_lines]):
            _text(draw, (x, y + thumb + 2 + line_h * (i + 1)), line, _DIM, font)
    if out_path is not None:  # readable by others as the umask allows; a missing folder is a one-line error
        info = PngInfo()
        info.add_text(PNG_MARK_KEY, SHEET_KIND)
        atomic_write(out_path, lambda f: sheet.save(f, format="PNG", pnginfo=info), output=output)
    return sheet
