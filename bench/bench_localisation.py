"""Where a text matches, measured: pointing game and mIoU on collages with known boxes, and small-object
retrieval (best patch vs pooled embedding). Issue 29.

    python bench/bench_localisation.py --model RUN/final --data DIGITS_DIR [--collages 100] [--seed 0]
    python bench/bench_localisation.py --model RUN/final --data PHOTOS_DIR --kind photos

Data are the packaged demo sets (`clipforge data demo digits|photos`): held-out digits (val/) or the photos,
pasted at random non-overlapping positions on a black canvas; each pasted object is a query ("a photo of the
number seven" with the digits' unseen templates' first form; a photo's first caption) and its box is the truth.
Per method (the tower's dense methods, Grad-CAM, and a random map of the same grid as the baseline):

- pointing game: the upsampled map's maximum falls inside the object's box (Zhang et al., "Top-down neural
  attention by excitation backprop", 2016);
- mIoU: the map min-max scaled and thresholded at 0.5, its IoU with the box, averaged over queries.

Small-object retrieval (SORCE's setting: one small object on a large canvas): a gallery of canvases, each with
one digit at its native scale somewhere on a 4x larger canvas; a query per class ranks the gallery by the pooled
cosine (what an index stores) or by the best cell's cosine of the dense map; mAP over the 10 classes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import add_common_args, summarize_fields, write_results

import numpy as np
import torch
from PIL import Image

from clipforge.encode import Encoder
from clipforge.encode.dense import encode_dense
from clipforge.explain import explain_vectors
from clipforge.models.dense import dense_stride, resolve_dense_method

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _objects(kind: str, root: Path):
    """[(PIL image, text)] of the held-out objects."""
    if kind == "digits":
        template = (root / "templates_unseen.txt").read_text().splitlines()[0]
        names = (root / "classnames.txt").read_text().split()
        out = []
        for c, name in enumerate(names):
            for f in sorted((root / "val").glob(f"*{c}*/*"))[:20] or sorted((root / "val" / name).glob("*"))[:20]:
                out.append((Image.open(f).convert("RGB"), template.format(c=name), c))
        return out
    rows = [json.loads(line) for line in (root / "photos.jsonl").read_text().splitlines()]
    return [(Image.open(root / r["image"]).convert("RGB"), r["captions"][0], i) for i, r in enumerate(rows)]


def _place(rng, canvas: int, obj: int, n: int, tries: int = 200):
    boxes = []
    for _ in range(tries):
        if len(boxes) == n:
            break
        x, y = (int(v) for v in rng.integers(0, canvas - obj + 1, 2))
        if all(x + obj <= b[0] or b[2] <= x or y + obj <= b[1] or b[3] <= y for b in boxes):
            boxes.append((x, y, x + obj, y + obj))
    return boxes


def _score(up: np.ndarray, box) -> tuple[bool, float]:
    x0, y0, x1, y1 = box
    yy, xx = np.unravel_index(int(np.argmax(up)), up.shape)
    lo, hi = up.min(), up.max()
    mask = (up - lo) / (hi - lo) > 0.5 if hi > lo else np.zeros_like(up, bool)
    truth = np.zeros_like(mask)
    truth[y0:y1, x0:x1] = True
    return bool(x0 <= xx < x1 and y0 <= yy < y1), float((mask & truth).sum() / max((mask | truth).sum(), 1))


def localisation(enc, objects, kind, collages, seed, canvas, obj, per, methods):
    rng = np.random.default_rng(seed)
    res = {m: [] for m in (*methods, "random")}
    for _ in range(collages):
        picks = rng.choice(len(objects), per, replace=False)
        if kind == "digits":  # distinct classes per collage: a text names one object
            classes = rng.choice(10, per, replace=False)
            picks = [rng.choice([i for i, o in enumerate(objects) if o[2] == c]) for c in classes]
        boxes = _place(rng, canvas, obj, per)
        img = Image.new("RGB", (canvas, canvas))
        for i, b in zip(picks, boxes):
            img.paste(objects[i][0].resize((obj, obj), Image.BICUBIC), b[:2])
        texts = [objects[i][1] for i in picks[:len(boxes)]]
        q = enc.encode_texts(texts)
        for m in methods:
            ex = explain_vectors(enc, [img], q, texts, method=m, size=canvas)[0]
            for t, up in enumerate(ex.upsampled()):
                res[m].append(_score(up, boxes[t]))
        grid = ex.maps.shape[1:]
        for t in range(len(boxes)):
            rand = torch.from_numpy(rng.random(grid, dtype=np.float32))[None, None]
            up = torch.nn.functional.interpolate(rand, size=(canvas, canvas), mode="bilinear")[0, 0].numpy()
            res["random"].append(_score(up, boxes[t]))
    return {m: {"pointing": float(np.mean([r[0] for r in v])), "miou": float(np.mean([r[1] for r in v])),
                "n": len(v)} for m, v in res.items()}


def _ap(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1))


def small_objects(enc, objects, seed, canvas, obj, gallery, method):
    rng = np.random.default_rng(seed + 1)
    imgs, labels = [], []
    for _ in range(gallery):
        i = int(rng.integers(len(objects)))
        x, y = (int(v) for v in rng.integers(0, canvas - obj + 1, 2))
        img = Image.new("RGB", (canvas, canvas))
        img.paste(objects[i][0].resize((obj, obj), Image.BICUBIC), (x, y))
        imgs.append(img)
        labels.append(objects[i][2])
    labels = np.array(labels)
    template = {o[2]: o[1] for o in objects}
    q = enc.encode_texts([template[c] for c in range(10)])  # (10, D)
    pooled = (enc.encode_images(imgs) @ q.T).numpy()  # (G, 10): the canvas at the model's own size
    dense = encode_dense(enc, imgs, method=method, size=canvas)  # (G, h, w, D)
    best = torch.einsum("ghwd,cd->gchw", dense, q).flatten(2).max(dim=2).values.numpy()  # (G, 10)
    return {"pooled_map": float(np.mean([_ap(pooled[:, c], labels == c) for c in range(10)])),
            "best_patch_map": float(np.mean([_ap(best[:, c], labels == c) for c in range(10)])),
            "chance_map": float(np.mean([(labels == c).mean() for c in range(10)])), "gallery": gallery}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a demo set folder (digits or photos)")
    ap.add_argument("--kind", choices=("digits", "photos"), default="digits")
    ap.add_argument("--collages", type=int, default=100)
    ap.add_argument("--per", type=int, default=4, help="objects per collage")
    ap.add_argument("--canvas", type=int, default=0, help="canvas px (default: 4x the model's image size)")
    ap.add_argument("--gallery", type=int, default=300, help="small-object gallery size (digits)")
    ap.add_argument("--out", default=None, help="where the raw JSON goes (default: printed only)")
    add_common_args(ap, seeds=(0,), seeds_help="seeds of the collages and the small-object gallery")
    a = ap.parse_args()
    torch.manual_seed(a.seeds[0])
    enc = Encoder.load(a.model, precision="fp32")
    obj = enc.model.config.vision.image_size
    canvas = a.canvas or 4 * obj
    if a.kind == "photos":
        obj = canvas // 4
    canvas -= canvas % dense_stride(enc.model)
    dense = [m for m in ("maskclip", "tokens") if _offers(enc.model, m)]
    t0 = time.time()
    objects = _objects(a.kind, Path(a.data))
    runs = []
    for seed in a.seeds:
        run = {"localisation": localisation(enc, objects, a.kind, a.collages, seed, canvas, obj, a.per,
                                            (*dense, "gradcam"))}
        if a.kind == "digits":
            run["small_objects"] = small_objects(enc, objects, seed, canvas, obj, a.gallery, dense[0])
        runs.append(run)
    out = {"model": a.model, "kind": a.kind, "canvas": canvas, "object": obj, "seeds": a.seeds, "per_seed": runs,
           "summary": summarize_fields(runs, a.seeds)}
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))
    write_results(None, out, a.json or a.out)


def _offers(model, method):
    try:
        resolve_dense_method(model, method)
        return True
    except Exception:  # noqa: BLE001 - a method the tower lacks
        return False


if __name__ == "__main__":
    main()
