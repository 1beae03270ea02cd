"""Write tests/golden/image_caption_selection.{npz,json}: CLIP_benchmark's `image_caption_selection` metrics
on fixed embeddings, for the parity test of clipforge's `image-caption-selection` task.

Runs in the reference environment (see tools/make_goldens.py), from the repository root:

    /work/refenv/bin/python tools/make_selection_golden.py

It imports nothing from clipforge. The embeddings are seeded random vectors (each caption a noisy copy of
its image, so accuracies sit between chance and 1), plus instances with exact ties (a negative identical to
the positive; two identical images), where CLIP_benchmark's `argmax` picks the lower index. Each group of
instances of one shape (images x captions) goes through CLIP_benchmark's own `evaluate` with a stand-in
model whose `encode_image` / `encode_text` look the stored vectors up (an image is a 1x1x1 tensor holding
its row number, a caption is the text "t<row>"), so every number in the JSON is CLIP_benchmark's.

Groups: SugarCrepe-style (one image, its caption first, then the negatives) of three negative types with
one, one and three negatives; a tie group; Winoground-style 2x2 groups (caption i describes image i); and a
tie 2x2 group.
"""
from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from clip_benchmark.metrics import image_caption_selection

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"
DIM = 16
# name: (instances, images per instance, captions per instance, noise on the true caption, on the others)
GROUPS = {
    "swap-object": (60, 1, 2, 1.0, 1.2),
    "replace-relation": (50, 1, 2, 0.8, 0.9),
    "replace-number": (40, 1, 4, 1.0, 1.1),
    "ties": (12, 1, 3, 0.3, 0.3),
    "winoground": (60, 2, 2, 1.0, 1.0),
    "winoground-ties": (12, 2, 2, 0.3, 0.3),
}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_group(rng, n, nim, nt, noise_pos, noise_neg, name):
    images = _unit(rng.normal(size=(n, nim, DIM)))
    texts = np.empty((n, nt, DIM), np.float32)
    for i in range(n):
        for j in range(nt):
            anchor = images[i, j] if j < nim else images[i, 0]  # a SugarCrepe negative is near its image too
            noise = noise_pos if (j == 0 or j < nim) else noise_neg
            texts[i, j] = _unit(anchor + noise * rng.normal(size=DIM))
    if name == "ties":  # a negative equal to the positive (a tie), or equal to the image (it wins)
        texts[:, 1] = texts[:, 0]
        texts[::3, 2] = texts[::3, 0]
        texts[1::3, 2] = images[1::3, 0]
    if name == "winoground-ties":  # identical images (odd instances), identical captions (every third)
        images[1::2, 1] = images[1::2, 0]
        texts[::3, 1] = texts[::3, 0]
    return images, texts


class Lookup(torch.nn.Module):
    """encode_image: a (B, 1, 1, 1) tensor of row numbers -> those rows; encode_text: token ids -> rows."""

    def __init__(self, images: np.ndarray, texts: np.ndarray):
        super().__init__()
        self.images, self.texts = torch.from_numpy(images), torch.from_numpy(texts)

    def encode_image(self, pixels):
        return self.images[pixels.view(-1).long()]

    def encode_text(self, tokens):
        return self.texts[tokens.view(-1)]


class Instances(torch.utils.data.Dataset):
    def __init__(self, n, nim, nt):
        self.n, self.nim, self.nt = n, nim, nt

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rows = torch.arange(i * self.nim, (i + 1) * self.nim, dtype=torch.float32).view(self.nim, 1, 1, 1)
        if self.nim == 1:
            rows = rows[0]  # (1, 1, 1): CLIP_benchmark views a 4-d batch as one image per instance
        return rows, [f"t{i * self.nt + j}" for j in range(self.nt)]


def image_captions_collate_fn(batch):
    """CLIP_benchmark's own (clip_benchmark.datasets.builder, which imports `requests` at module level):
    images stacked, each instance's captions kept as its list."""
    transposed = list(zip(*batch))
    return torch.utils.data.default_collate(transposed[0]), transposed[1]


def tokenizer(texts):
    return torch.tensor([int(t[1:]) for t in texts])


def main() -> None:
    rng = np.random.default_rng(27)
    arrays, results = {}, {}
    for name, (n, nim, nt, noise_pos, noise_neg) in GROUPS.items():
        images, texts = make_group(rng, n, nim, nt, noise_pos, noise_neg, name)
        arrays[f"{name}/images"], arrays[f"{name}/texts"] = images, texts
        model = Lookup(images.reshape(-1, DIM), texts.reshape(-1, DIM))
        loader = torch.utils.data.DataLoader(Instances(n, nim, nt), batch_size=7, shuffle=False,
                                             collate_fn=image_captions_collate_fn)
        results[name] = image_caption_selection.evaluate(model, loader, tokenizer, "cpu", amp=False)
        print(name, results[name])
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "image_caption_selection.npz", **arrays)
    meta = {"generator": "python tools/make_selection_golden.py (reference environment)",
            "versions": {p: version(p) for p in ("clip-benchmark", "torch", "numpy")},
            "groups": {k: dict(zip(("instances", "images", "captions"), v[:3])) for k, v in GROUPS.items()},
            "metrics": results}
    (OUT / "image_caption_selection.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
