"""A synthetic long-caption set, built offline: pairs of handwritten digits whose captions put the detail late.

Each image shows two of scikit-learn's digits side by side. Its caption starts with a summary sentence that
names the left digit, in one of several wordings, and ends with the sentence that names the right one:

    "A scanned page from an old form with a handwritten seven next to another digit, both written in dark
     ink. The seven is on the left. The digit on the right is a two."

With a 32-token context (the `tiny` config) the right digit always falls past the end, so a model that
truncates cannot tell apart images that differ only on the right, while a model stretched to a longer
context (`clipforge stretch`) can read it; the first sentence is Long-CLIP's short summary. Written as
train.jsonl / test.jsonl (id, image, captions: [long caption], left, right) plus PNGs; test images are
drawn from digits the training split never uses. Idempotent and atomic like the other demo sets.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from clipforge.data.demo_sets import DEMO_VERSION, DIGIT_NAMES, _build_atomically, _digit_image, _write_lines
from clipforge.errors import UsageError

SUMMARIES = [
    "A scanned page from an old form with a handwritten {l} next to another digit, both written in dark ink.",
    "This grey picture from a paper archive shows a handwritten {l} beside a second digit on a dark page.",
    "An old office form was scanned, and on it a {l} and one more digit are written by hand in a row.",
    "A low resolution scan of a paper form where someone wrote a {l} and then another digit next to it.",
]
LEFT = "The {l} is on the left."
RIGHT = "The digit on the right is a {r}."


def long_caption(left: int, right: int, variant: int) -> str:
    l_name, r_name = DIGIT_NAMES[left], DIGIT_NAMES[right]
    return " ".join([SUMMARIES[variant % len(SUMMARIES)].format(l=l_name), LEFT.format(l=l_name),
                     RIGHT.format(r=r_name)])


def build_long_captions(out_dir: str, num_train: int = 3000, num_test: int = 300, seed: int = 0) -> dict:
    """Write the long-caption set (32x32 images: two 16-pixel digits side by side); return paths + counts."""
    if num_train < 1 or num_test < 1:
        raise UsageError("num_train and num_test must be >= 1")
    params = {"name": "long-captions", "num_train": num_train, "num_test": num_test, "seed": seed,
              "version": DEMO_VERSION}

    def build(tmp: str) -> dict:
        d = load_digits()
        idx = np.arange(len(d.target))
        pools = dict(zip(("train", "test"), train_test_split(idx, test_size=0.25, random_state=seed,
                                                             stratify=d.target)))
        rng = np.random.default_rng(seed)
        for split, count in (("train", num_train), ("test", num_test)):
            os.makedirs(os.path.join(tmp, split))
            pool, rows = pools[split], []
            for i in range(count):
                a, b = (int(x) for x in rng.choice(pool, size=2, replace=False))
                img = Image.new("L", (32, 32), 0)
                img.paste(_digit_image(d.images[a], 16, rng), (0, 8))
                img.paste(_digit_image(d.images[b], 16, rng), (16, 8))
                rel = f"{split}/{i:05d}.png"
                img.save(os.path.join(tmp, rel))
                left, right = int(d.target[a]), int(d.target[b])
                rows.append({"id": f"long-{split}-{i:05d}", "image": rel,
                             "captions": [long_caption(left, right, int(rng.integers(len(SUMMARIES))))],
                             "left": left, "right": right})
            _write_lines(os.path.join(tmp, f"{split}.jsonl"), (json.dumps(r) for r in rows))
        return {"train_manifest": "train.jsonl", "test_manifest": "test.jsonl", "num_train": num_train,
                "num_test": num_test}

    return _build_atomically(out_dir, params, build)
