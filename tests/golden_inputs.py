"""Deterministic inputs shared by the golden generator (tools/make_goldens.py, reference environment) and the
golden tests (normal suite): images of many sizes, aspect ratios and modes, and varied captions.

Both sides build the same inputs from scikit-image's bundled photos and a seeded generator; the goldens
record a checksum of every input so a drift (another scikit-image or Pillow) fails loudly, never silently.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
from PIL import Image


def _photo(name: str) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    if arr.dtype == bool:
        return Image.fromarray(arr.astype(np.uint8) * 255).convert("1")
    return Image.fromarray(arr)


def _fit(img: Image.Image, w: int, h: int) -> Image.Image:
    return img.resize((w, h), Image.LANCZOS)


def _alpha_ramp(img: Image.Image) -> Image.Image:
    w, h = img.size
    alpha = (np.add.outer(np.arange(h), np.arange(w)) * 255 // max(1, w + h - 2)).astype(np.uint8)
    out = img.convert("RGBA")
    out.putalpha(Image.fromarray(alpha))
    return out


def golden_images() -> list[tuple[str, Image.Image]]:
    """(name, PIL image) pairs: common photo shapes (640x480, 500x375, 375x500, 16:9, 9:16), exact and
    off-by-one sizes, margins where crop-offset conventions differ (299 -> 224), tiny, very wide / tall,
    upscaled, and grayscale / RGBA / LA / palette (with and without transparency) / 1-bit / CMYK modes."""
    astro, coffee, rocket, chelsea = (_photo(n) for n in ("astronaut", "coffee", "rocket", "chelsea"))
    out = [
        ("astronaut_640x480", _fit(astro, 640, 480)),
        ("coffee_500x375", _fit(coffee, 500, 375)),
        ("rocket_375x500", _fit(rocket, 375, 500)),
        ("chelsea_native_451x300", chelsea),
        ("astronaut_224x224", _fit(astro, 224, 224)),
        ("coffee_225x224", _fit(coffee, 225, 224)),
        ("chelsea_299x224", _fit(chelsea, 299, 224)),
        ("chelsea_224x301", _fit(chelsea, 224, 301)),
        ("astronaut_257x255", _fit(astro, 257, 255)),
        ("rocket_tiny_7x5", _fit(rocket, 7, 5)),
        ("coffee_tiny_3x2", _fit(coffee, 3, 2)),
        ("coffee_wide_1000x37", _fit(coffee, 1000, 37)),
        ("rocket_tall_31x900", _fit(rocket, 31, 900)),
        ("chelsea_upscale_100x75", _fit(chelsea, 100, 75)),
        ("astronaut_1920x1080", _fit(astro, 1920, 1080)),
        ("coffee_720x1280", _fit(coffee, 720, 1280)),
        ("hubble_333x500", _fit(_photo("hubble_deep_field"), 333, 500)),
        ("camera_gray_L_512x384", _fit(_photo("camera"), 512, 384)),
        ("coins_gray_L_native", _photo("coins")),
        ("logo_RGBA_native", _photo("logo")),
        ("astronaut_RGBA_ramp_300x200", _alpha_ramp(_fit(astro, 300, 200))),
        ("camera_LA_260x180", _alpha_ramp(_fit(_photo("camera"), 260, 180)).convert("LA")),
        ("chelsea_P_320x240", _fit(chelsea, 320, 240).quantize(64)),
        ("coffee_P_transparent_200x260", _transparent_palette(_fit(coffee, 200, 260))),
        ("horse_1bit_328x400", _fit(_photo("horse").convert("L"), 328, 400).convert("1")),
        ("coffee_CMYK_300x300", _fit(coffee, 300, 300).convert("CMYK")),
    ]
    return out


def _transparent_palette(img: Image.Image) -> Image.Image:
    p = img.quantize(32)
    p.info["transparency"] = 0  # palette index 0 is transparent (tRNS), as in GIF / PNG-8
    return p


def image_digest(img: Image.Image) -> str:
    """Checksum of an image's mode, size and pixels (what the reference and clipforge both start from)."""
    h = hashlib.sha256(f"{img.mode}{img.size}{sorted(img.info.items())}".encode())
    h.update(img.tobytes())
    if img.mode == "P":
        h.update(bytes(img.getpalette() or []))
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- captions
WORDS = (
    "a photo of the cat dog bicycle red blue street city night snow playing crossing aerial view bowl soup "
    "people running café naïve résumé Zürich São Paulo Ørsted straße İstanbul Москва кошка 東京 猫 写真 "
    "サイクリング 서울 고양이 北京 日本の猫 Ελληνικά ΟΔΟΣ ΣΟΦΟΣ ΣΑΣ Σ ὈΔΥΣΣΕΎΣ ΑΣ. σοφός שלום עולם مرحبا "
    "بالعالم हिन्दी สวัสดี e\u0301te\u0301 Z\u0351\u0300a\u0334l\u0338g\u0335o n\u0303 ﬁsh ﬂour Ｈｅｌｌｏ ＡＢＣ "
    "Ã©tÃ© â€œmojibakeâ€\x9d 🚲 🐱 ❤️ 👍🏽 👨\u200d👩\u200d👧 🇫🇷 🏳️\u200d🌈 3.14 2024 #1 ½ ™ ℃ ∑ √2 "
    "it's they're we've I'm you'll she'd don't IT'S O'Brien it'ſ e-mail U.S.A. x2 — “quoted” ‘single’ "
    "(paren) [bracket] {brace} <tag> &amp; &amp;amp; &lt;b&gt; &#39; &quot;hi&quot; &nbsp; &copy; &#x1F600; "
    "a/b c\\d 100% $5 @user ... !!! ??? ;-) ~~~ ___ \u200b \u00a0 \u3000 \ufeffbom "
    "<|endoftext|> <|startoftext|> <start_of_text> <end_of_text> <END_OF_TEXT> x<end_of_text>y !<end_of_text> "
    "</s> <unk> <pad>"
).split(" ")
SEPARATORS = (" ", "  ", "\t", " \n ", ", ", "", "\u00a0", "\u3000", "\x1c")
EDGES = [
    "", " ", "   \t\n ", "\u3000\u00a0", "\x1c\x1d", "<|endoftext|> literal", "<end_of_text> literal",
    "a <start_of_text> b", "ΣΟΦΟΣ", "ΟΔΟΣ ΣΟΦΙΑΣ", "Σ", "ΑΣ.", "&amp;lt;end_of_text&amp;gt;", "word " * 100,
    "長い" * 200, "😀" * 90, "supercalifragilisticexpialidocious " * 20, "it'ſ IT'S", "\u0301", "a\u0301",
]


def golden_captions(n: int = 2400, seed: int = 11) -> list[str]:
    """`n` captions: fixed edge cases, then seeded mixes of the words above (1 to 120 words, random case,
    separators, padding whitespace); about a tenth overflow 77 tokens."""
    rng = random.Random(seed)
    out = list(EDGES)
    words = [w for w in WORDS if w]
    while len(out) < n:
        k = rng.choice([1, 2, 3, 5, 8, 13, 21, 40, 120])
        ws = [rng.choice(words) for _ in range(k)]
        r = rng.random()
        if r < 0.15:
            ws = [w.upper() for w in ws]
        elif r < 0.3:
            ws = [w.capitalize() for w in ws]
        text = rng.choice(SEPARATORS).join(ws)
        if rng.random() < 0.15:
            text = rng.choice(["  ", "\n", "\u3000"]) + text + rng.choice(["  ", "\t", ""])
        out.append(text)
    return out
