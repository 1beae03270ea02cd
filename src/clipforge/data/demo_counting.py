"""A synthetic counting set, built offline: images of 1–6 shapes with captions that say how many.

`build_counting(out_dir)` draws coloured circles, squares and triangles (one colour and one shape per image,
1 to 6 of them, random sizes and places on a dark canvas) and writes:

    train.jsonl   id, image, captions (three phrasings from COUNT_TEMPLATES, the number as a word or digits),
                  count, color, shape
    val.jsonl     held-out images; one caption in an unseen phrasing (EVAL_TEMPLATE)
    train/, val/  the PNGs

Counting accuracy (CountBench-style) scores each held-out image against the six captions EVAL_TEMPLATE
filled with counts 1..6 and its own colour and shape: the model must read the number, since everything
else in the candidates is equal. `bench/bench_objectives.py counting` trains with and without the counting
term on this set at equal steps. Idempotent and atomic like the other demo sets.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from clipforge.data.demo_sets import DEMO_VERSION, _build_atomically, _write_lines
from clipforge.errors import UsageError

COUNT_WORDS = ["one", "two", "three", "four", "five", "six"]
COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (60, 90, 240), "yellow": (240, 220, 40),
          "white": (235, 235, 235)}
SHAPES = ["circle", "square", "triangle"]
COUNT_TEMPLATES = [
    "a photo of {n} {color} {shapes}.",
    "{n} {color} {shapes} on a dark background.",
    "there are {n} {shapes} in this picture, all {color}.",
    "a drawing with {n} {color} {shapes}.",
    "an image of exactly {n} {shapes} coloured {color}.",
]
EVAL_TEMPLATE = "a picture showing {n} {color} {shapes}."
# Captions that name colour and shape but not how many, like most web captions: `count_fraction` < 1 gives the
# rest of the training images these (the counting paper's setting: counts are rare in the training captions).
PLAIN_TEMPLATES = [
    "a photo of {a}{color} {shapes}.",
    "{a}{color} {shapes} on a dark background.",
    "a drawing with {a}{color} {shapes}.",
]


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def count_caption(template: str, n: int, color: str, shape: str, digits: bool = False) -> str:
    word = str(n) if digits else COUNT_WORDS[n - 1]
    return template.format(n=word, color=color, shapes=_plural(shape, n))


def plain_caption(template: str, n: int, color: str, shape: str) -> str:
    """A caption without the number (singular with an article for one shape, plural otherwise)."""
    return template.format(a="a " if n == 1 else "", color=color, shapes=_plural(shape, n))


def _draw(n: int, color: str, shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """n shapes in distinct cells of a 4x4 grid (so they never overlap), jittered inside their cell."""
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 40, 3)))
    draw = ImageDraw.Draw(img)
    cell = size // 4
    for c in rng.choice(16, size=n, replace=False):
        r = int(rng.integers(max(2, cell // 3), max(3, cell // 2) + 1))      # radius
        cx = (c % 4) * cell + cell // 2 + int(rng.integers(-(cell // 2 - r), cell // 2 - r + 1))
        cy = (c // 4) * cell + cell // 2 + int(rng.integers(-(cell // 2 - r), cell // 2 - r + 1))
        fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLORS[color])
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def build_counting(out_dir: str, size: int = 32, num_train: int = 3000, num_val: int = 600, seed: int = 0,
                   count_fraction: float = 1.0) -> dict:
    """Write the counting set; return {name: absolute path} (train_manifest, val_manifest, ...) + counts.

    count_fraction: the share of training images whose captions state the count; the others get captions with
    colour and shape only (PLAIN_TEMPLATES). The images, the held-out set and the random draws for the counting
    images do not depend on it."""
    if not 16 <= size <= 512:
        raise UsageError(f"size must be in [16, 512], got {size}")
    if not 0.0 < count_fraction <= 1.0:
        raise UsageError(f"count_fraction must be in (0, 1], got {count_fraction}")
    if num_train < 1 or num_val < 1:
        raise UsageError("num_train and num_val must be >= 1")
    params = {"name": "counting", "size": size, "num_train": num_train, "num_val": num_val, "seed": seed,
              "version": DEMO_VERSION, **({"count_fraction": count_fraction} if count_fraction < 1.0 else {})}

    def build(tmp: str) -> dict:
        rng = np.random.default_rng(seed)
        plain_rng = np.random.default_rng([seed, 1])  # its own stream: the images never depend on count_fraction
        for split, count in (("train", num_train), ("val", num_val)):
            os.makedirs(os.path.join(tmp, split))
            rows = []
            for i in range(count):
                n = int(rng.integers(1, 7))
                color = list(COLORS)[int(rng.integers(len(COLORS)))]
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                rel = f"{split}/{i:05d}.png"
                _draw(n, color, shape, size, rng).save(os.path.join(tmp, rel))
                if split == "train":
                    picks = rng.choice(len(COUNT_TEMPLATES), size=3, replace=False)
                    caps = [count_caption(COUNT_TEMPLATES[t], n, color, shape, digits=bool(rng.random() < 0.3))
                            for t in picks]
                    if count_fraction < 1.0 and plain_rng.random() >= count_fraction:
                        caps = [plain_caption(t, n, color, shape) for t in PLAIN_TEMPLATES]
                else:
                    caps = [count_caption(EVAL_TEMPLATE, n, color, shape)]
                rows.append({"id": f"count-{split}-{i:05d}", "image": rel, "captions": caps, "count": n,
                             "color": color, "shape": shape, "label": n - 1})
            _write_lines(os.path.join(tmp, f"{split}.jsonl"), (json.dumps(r) for r in rows))
        _write_lines(os.path.join(tmp, "classnames.txt"), COUNT_WORDS)
        return {"train_manifest": "train.jsonl", "val_manifest": "val.jsonl", "classnames": "classnames.txt",
                "num_train": num_train, "num_val": num_val}

    return _build_atomically(out_dir, params, build)
