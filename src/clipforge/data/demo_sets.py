"""Demo datasets built offline from data that ships inside installed packages.

`build_digits`: scikit-learn's 1,797 handwritten digits (8x8), up-scaled with a little random affine jitter and
noise, as a pair dataset (train.jsonl, several captions per image from TRAIN_TEMPLATES) and a held-out,
stratified validation split (an image folder `val/<digit>/` with classnames.txt, and val.jsonl). A second,
disjoint set of UNSEEN_TEMPLATES is written for zero-shot tests that must not reuse the training phrasing.

`build_fonts`: the same ten digits printed in the fonts matplotlib ships (DejaVu Sans / Serif / Mono, STIX,
Computer Modern), with augmentations (rotation, scale, stroke width, shift, noise), at the digits demo's
resolution and layout: a shifted domain for adaptation benchmarks (handwritten -> printed and back).

`build_photos`: scikit-image's bundled sample photos with hand-written captions (photos_captions.json), as a
files folder (same-stem .txt captions) and a JSONL manifest.

Both are idempotent: a finished build leaves `.clipforge_demo.json`, and a second call with the same
parameters returns at once. A build happens in a temporary sibling folder that replaces `out_dir` only when
complete, so an interrupted build never leaves a half dataset behind.
"""
from __future__ import annotations

import json
import os
import warnings
from importlib import resources

import matplotlib
import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from clipforge.atomic import atomic_directory
from clipforge.errors import ClipforgeError, UsageError

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_TEMPLATES = [
    "a photo of the digit {c}.",
    "a handwritten {c}.",
    "the number {c}.",
    "an image of a {c}.",
    "a drawing of the digit {c}.",
    "a picture of the number {c}.",
    "a scan of a handwritten {c}.",
    "the digit {c}, written by hand.",
    "a blurry {c}.",
    "a low resolution image of a {c}.",
]
UNSEEN_TEMPLATES = [
    "a pixelated photo of the numeral {c}.",
    "this is a {c}.",
    "a close-up of the figure {c}.",
    "a black and white {c}.",
    "a sketch of the number {c}.",
    "a small {c} on a dark background.",
]
# Training captions are decorated with context words so the text tower learns to read the class word through
# phrasing it has not seen (as web captions teach real CLIP models). The pools share no word with
# UNSEEN_TEMPLATES, so held-out prompts stay unseen in wording as well as in template.
ADJECTIVES = ["faint", "bold", "tilted", "noisy", "grainy", "tiny", "large", "centred", "crooked", "thin",
              "thick", "messy", "neat", "grey", "bright", "blurred", "rotated", "shifted", "scanned", "printed"]
SUFFIXES = ["in a notebook", "in ink", "in pencil", "with noise", "from a scanner", "at low contrast",
            "in a light frame", "drawn quickly", "from a form", "in a box", "seen from above", "in a grid",
            "in grayscale", "at an angle", "with rough edges"]
MARKER = ".clipforge_demo.json"
DEMO_VERSION = 2


def _finished(out_dir: str, params: dict) -> dict | None:
    try:
        with open(os.path.join(out_dir, MARKER), encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    if done.get("params") != params:
        return None
    paths = done.get("paths", {})
    if all(os.path.exists(p) for p in paths.values() if isinstance(p, str) and os.path.isabs(p)):
        return paths
    return None


def _build_atomically(out_dir: str, params: dict, build) -> dict:
    """Run build(tmp_dir) -> {name: relative path}; swap the result into out_dir; return absolute paths."""
    out_dir = os.path.abspath(out_dir)
    paths = _finished(out_dir, params)
    if paths is not None:
        return paths
    paths: dict = {}

    def write(tmp) -> None:  # an earlier demo build with other parameters (checked above) is replaced
        rel = build(str(tmp))
        paths.update({k: (os.path.join(out_dir, v) if isinstance(v, str) else v) for k, v in rel.items()})
        paths["root"] = out_dir
        _write_json(os.path.join(tmp, MARKER), {"params": params, "paths": paths})

    atomic_directory(out_dir, write, kind="demo-set", overwritable=False,
                     recognise=lambda p: (p / MARKER).is_file())
    return paths


def _digit_set_files(tmp: str, train_templates, extra: dict) -> dict:
    """Write a digit set's class names and templates; return its {name: relative path} (+ `extra`)."""
    _write_lines(os.path.join(tmp, "classnames.txt"), DIGIT_NAMES)
    _write_lines(os.path.join(tmp, "templates_train.txt"), train_templates)
    _write_lines(os.path.join(tmp, "templates_unseen.txt"), UNSEEN_TEMPLATES)
    return {"train_manifest": "train.jsonl", "train_dir": "train", "val_manifest": "val.jsonl", "val_dir": "val",
            "classnames": "classnames.txt", "templates_train": "templates_train.txt",
            "templates_unseen": "templates_unseen.txt", **extra}


def _copy_descriptions(tmp: str) -> str:
    """Write the packaged digit descriptions into a digit set (`descriptions.json`); return its relative path."""
    with open(digit_descriptions_path(), encoding="utf-8") as f:
        _write_json(os.path.join(tmp, "descriptions.json"), json.load(f))
    return "descriptions.json"


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def _write_lines(path: str, lines) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _digit_image(x8: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """(8, 8) values 0..16 -> (size, size) greyscale PIL image, jittered (rotation, scale, shift) and noised."""
    base = Image.fromarray(np.clip(x8 * (255.0 / 16.0), 0, 255).astype(np.uint8), "L")
    inner = int(round(size * rng.uniform(0.70, 0.85)))
    img = base.resize((inner, inner), Image.BICUBIC)
    canvas = Image.new("L", (size, size), 0)
    off = (size - inner) // 2
    shift = rng.integers(-max(1, size // 16), max(1, size // 16) + 1, size=2)
    canvas.paste(img, (off + int(shift[0]), off + int(shift[1])))
    canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
    arr = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 8.0, size=(size, size))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _digit_captions(label: int, rng: np.random.Generator, templates: list[str], k: int,
                    decorate: bool = False) -> list[str]:
    picks = rng.choice(len(templates), size=min(k, len(templates)), replace=False)
    out = []
    for t in picks:
        # Fill with the word ("seven") or the numeral ("7") so both spellings are learned.
        name = DIGIT_NAMES[label] if rng.random() < 0.7 else str(label)
        if decorate and rng.random() < 0.5:
            name = f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]} {name}"
        cap = templates[t].format(c=name)
        if decorate and rng.random() < 0.5:
            cap = cap.rstrip(".") + f" {SUFFIXES[rng.integers(len(SUFFIXES))]}."
        out.append(cap)
    return out


def build_digits(out_dir: str, size: int = 32, seed: int = 0, val_fraction: float = 0.2,
                 captions_per_image: int = 6) -> dict:
    """Write the digits demo; return {name: absolute path} (root, train_manifest, train_dir, val_dir,
    val_manifest, classnames, templates_train, templates_unseen, descriptions: the packaged class descriptions
    for GIST / CuPL) plus counts."""
    if not 8 <= size <= 512:
        raise UsageError(f"size must be in [8, 512], got {size}")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    params = {"name": "digits", "size": size, "seed": seed, "val_fraction": val_fraction,
              "captions_per_image": captions_per_image, "version": DEMO_VERSION, "descriptions": True}

    def build(tmp: str) -> dict:

        d = load_digits()
        idx = np.arange(len(d.target))
        tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=d.target)
        rng = np.random.default_rng(seed)
        counts = {}
        for split, ids in (("train", np.sort(tr)), ("val", np.sort(va))):
            rows = []
            for digit in range(10):
                os.makedirs(os.path.join(tmp, split, str(digit)), exist_ok=True)
            for i in ids:
                label = int(d.target[i])
                rel = f"{split}/{label}/{i:04d}.png"
                _digit_image(d.images[i], size, rng).save(os.path.join(tmp, rel))
                templates = TRAIN_TEMPLATES if split == "train" else UNSEEN_TEMPLATES
                k = captions_per_image if split == "train" else 1
                rows.append({"id": f"digits-{i:04d}", "image": rel, "captions": _digit_captions(
                    label, rng, templates, k, decorate=split == "train"), "label": label})
            _write_lines(os.path.join(tmp, f"{split}.jsonl"), (json.dumps(r) for r in rows))
            _write_lines(os.path.join(tmp, split, "classnames.txt"), DIGIT_NAMES)
            counts[f"num_{split}"] = len(rows)
        return _digit_set_files(tmp, TRAIN_TEMPLATES, {"descriptions": _copy_descriptions(tmp), **counts})

    return _build_atomically(out_dir, params, build)


# matplotlib's bundled TrueType fonts that draw the ten ASCII digits as digits (not symbol, extension or
# old-style-figure faces, and not the Last Resort placeholder font).
FONT_FILES = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
]
FONT_TEMPLATES = [
    "a photo of the digit {c}.",
    "a printed {c}.",
    "the number {c}.",
    "an image of a {c}.",
    "the digit {c} in a typeface.",
    "a picture of the number {c}.",
    "a typed {c}.",
    "the digit {c}, printed.",
    "a blurry {c}.",
    "a low resolution image of a {c}.",
]


def digit_descriptions_path() -> str:
    """The packaged hand-written descriptions of the ten digits ({class: [descriptions]}, CuPL's format): what
    GIST-style methods match images to, since no language model runs here."""
    return str(resources.files("clipforge.data").joinpath("digit_descriptions.json"))


def font_paths() -> list[str]:
    """Absolute paths of FONT_FILES inside the installed matplotlib (all of them ship with it)."""
    root = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    paths = [os.path.join(root, f) for f in FONT_FILES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ClipforgeError(f"matplotlib's bundled fonts are missing: {missing[:3]}")
    return paths


def _font_digit_image(digit: int, font_path: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One printed digit, light on dark like the handwritten set: random scale, stroke, shift, rotation, noise."""
    big = 4 * size  # draw large, then downsample (anti-aliasing)
    font = ImageFont.truetype(font_path, int(big * rng.uniform(0.55, 0.85)))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 3)) * big // 64
    x0, y0, x1, y1 = draw.textbbox((0, 0), str(digit), font=font, stroke_width=stroke)
    jitter = rng.integers(-big // 12, big // 12 + 1, size=2)
    pos = ((big - (x1 - x0)) // 2 - x0 + int(jitter[0]), (big - (y1 - y0)) // 2 - y0 + int(jitter[1]))
    draw.text(pos, str(digit), fill=int(rng.integers(170, 256)), font=font, stroke_width=stroke,
              stroke_fill=int(rng.integers(170, 256)))
    canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    img = canvas.resize((size, size), Image.BOX)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 8.0, size=(size, size))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def build_fonts(out_dir: str, size: int = 32, seed: int = 0, per_class_train: int = 150,
                per_class_val: int = 100, captions_per_image: int = 6) -> dict:
    """Write the printed-digits demo (same layout as `build_digits`: train.jsonl with captions, `val/<digit>/`
    image folder, val.jsonl, classnames, train and unseen templates); return {name: absolute path} + counts.

    Every image picks a font from FONT_FILES and its augmentation from one seeded generator, so a build is
    deterministic for (size, seed, counts) and two builds are byte-identical.
    """
    if not 8 <= size <= 512:
        raise UsageError(f"size must be in [8, 512], got {size}")
    if per_class_train < 1 or per_class_val < 1:
        raise UsageError(f"per_class_train and per_class_val must be >= 1, got {per_class_train}, {per_class_val}")
    fonts = font_paths()
    params = {"name": "fonts", "size": size, "seed": seed, "per_class_train": per_class_train,
              "per_class_val": per_class_val, "captions_per_image": captions_per_image, "fonts": FONT_FILES,
              "version": DEMO_VERSION}

    def build(tmp: str) -> dict:
        rng = np.random.default_rng(seed)
        counts, n = {}, 0
        for split, per_class in (("train", per_class_train), ("val", per_class_val)):
            rows = []
            for digit in range(10):
                os.makedirs(os.path.join(tmp, split, str(digit)), exist_ok=True)
            for j in range(per_class * 10):
                label, font = j % 10, int(rng.integers(len(fonts)))
                rel = f"{split}/{label}/{n:05d}.png"
                _font_digit_image(label, fonts[font], size, rng).save(os.path.join(tmp, rel))
                templates = FONT_TEMPLATES if split == "train" else UNSEEN_TEMPLATES
                k = captions_per_image if split == "train" else 1
                rows.append({"id": f"fonts-{n:05d}", "image": rel, "label": label, "font": FONT_FILES[font],
                             "captions": _digit_captions(label, rng, templates, k, decorate=split == "train")})
                n += 1
            _write_lines(os.path.join(tmp, f"{split}.jsonl"), (json.dumps(r) for r in rows))
            _write_lines(os.path.join(tmp, split, "classnames.txt"), DIGIT_NAMES)
            counts[f"num_{split}"] = len(rows)
        return _digit_set_files(tmp, FONT_TEMPLATES, {"descriptions": _copy_descriptions(tmp), **counts})

    return _build_atomically(out_dir, params, build)


def photo_captions() -> dict:
    """{name: {"loader": skimage.data function, "captions": [...]}} from the packaged JSON."""
    text = resources.files("clipforge.data").joinpath("photos_captions.json").read_text(encoding="utf-8")
    return json.loads(text)


def _load_photo(loader: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = getattr(skimage.data, loader)()
    if isinstance(arr, tuple):  # stereo pairs: keep the left view
        arr = arr[0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return arr


def build_photos(out_dir: str, max_side: int = 256) -> dict:
    """Write the photos demo (images/<name>.png + <name>.txt, photos.jsonl); return {name: path} + count.

    Photos whose loader needs a download (not bundled in this scikit-image) are left out and listed under
    "missing".
    """
    params = {"name": "photos", "max_side": max_side, "version": DEMO_VERSION}

    def build(tmp: str) -> dict:
        os.makedirs(os.path.join(tmp, "images"))
        rows, missing = [], []
        for name, entry in photo_captions().items():
            try:
                arr = _load_photo(entry["loader"])
            except Exception:  # noqa: BLE001 - a loader that needs the network or an optional package
                missing.append(name)
                continue
            img = Image.fromarray(arr)
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGBA").convert("RGB")
            img.thumbnail((max_side, max_side), Image.LANCZOS)
            rel = f"images/{name}.png"
            img.save(os.path.join(tmp, rel))
            _write_lines(os.path.join(tmp, "images", f"{name}.txt"), entry["captions"])
            rows.append({"id": name, "image": rel, "captions": entry["captions"]})
        if not rows:
            raise ClipforgeError("no scikit-image sample photo could be loaded")
        _write_lines(os.path.join(tmp, "photos.jsonl"), (json.dumps(r) for r in rows))
        return {"images_dir": "images", "manifest": "photos.jsonl", "num_photos": len(rows), "missing": missing}

    return _build_atomically(out_dir, params, build)


DEMOS = {"digits": build_digits, "fonts": build_fonts, "photos": build_photos}
