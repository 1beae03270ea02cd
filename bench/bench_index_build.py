"""Images/s of `clipforge index build` on a folder of JPEGs, per model and precision.

    python bench/bench_index_build.py [--images 500] [--vit-images 200] [--workers 1] [--out docs/bench_index_build.md]

Makes a folder of 256 px JPEGs from the photos demo with random augmentations (crop, flip, rotation, colour
jitter), then times `build_index` end to end (decode in DataLoader workers + preprocess + model + float16
shards + faiss) for the tiny model and ViT-B-32 (random init: speed does not depend on the weights), in fp32
and with bf16 weights. The first few batches are included, as a user would see them.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageEnhance

from common import add_common_args, fmt, machine_line, summarize, write_results


def make_jpegs(photos_dir: str, out: str, n: int, size=256, seed: int = 0) -> list:
    """n JPEGs (size: an int for squares, or (width, height)) from the photos' PNGs, randomly augmented."""
    w_out, h_out = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    base = [Image.open(os.path.join(photos_dir, f)).convert("RGB") for f in sorted(os.listdir(photos_dir))
            if f.endswith(".png")]
    os.makedirs(out, exist_ok=True)
    for i in range(n):
        im = base[i % len(base)]
        w, h = im.size
        s = rng.uniform(0.5, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x, y, x + cw, y + ch)).rotate(float(rng.uniform(-15, 15)), expand=False)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.6, 1.4)))
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.7, 1.3)))
        im.resize((w_out, h_out), Image.BICUBIC).save(os.path.join(out, f"img_{i:05d}.jpg"), quality=90)
    return [os.path.join(out, f"img_{i:05d}.jpg") for i in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--vit-images", type=int, default=200, help="fewer for ViT-B-32 to keep the run short")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=None)
    add_common_args(ap, seeds=(0,), seeds_help="one repeat per seed, each on its own augmented JPEG folder")
    args = ap.parse_args(argv)

    from clipforge.data.demo_sets import build_photos
    from clipforge.retrieval.build import build_index
    from clipforge.encode import cpu_has_native_bf16

    tmp = tempfile.mkdtemp(prefix="bench-index-")
    photos = build_photos(os.path.join(tmp, "photos"))
    rows = []
    try:
        for seed, (model, n) in ((s, c) for s in args.seeds for c in (("tiny", args.images),
                                                                       ("ViT-B-32", args.vit_images))):
            folder = os.path.join(tmp, f"jpegs-{n}-{seed}")
            if not os.path.isdir(folder):
                make_jpegs(photos["images_dir"], folder, n, seed=seed)
            for prec in ("fp32", "bf16"):
                out = os.path.join(tmp, f"idx-{model}-{prec}")
                t = time.perf_counter()
                s = build_index(f"files:{folder}", model, out, batch_size=args.batch_size, workers=args.workers,
                                precision=prec, progress=False, text=False)
                wall = time.perf_counter() - t
                rows.append({"seed": seed, "model": model, "precision": prec, "images": n, "embed_s": s["seconds"],
                             "images_per_s": s["images_per_s"], "wall_s": wall})
                print(rows[-1], flush=True)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cells = {}
    for r in rows:
        cells.setdefault((r["model"], r["precision"], r["images"]), []).append(r)
    stats = [{"model": m, "precision": p, "images": n,
              "images_per_s": summarize([r["images_per_s"] for r in rs], [r["seed"] for r in rs]),
              "wall_s": summarize([r["wall_s"] for r in rs], [r["seed"] for r in rs])}
             for (m, p, n), rs in cells.items()]
    write_results(args.out, {"bench": "index_build", "seeds": args.seeds, "rows": rows, "summary": stats}, args.json)
    if args.out:
        lines = ["# `index build` throughput (CPU)", "",
                 f"`python bench/bench_index_build.py --images {args.images} --vit-images {args.vit_images} "
                 f"--workers {args.workers} --batch-size {args.batch_size} --seeds {','.join(map(str, args.seeds))}` on "
                 f"{machine_line()} (native bf16: {cpu_has_native_bf16()}); mean ± sample std over the seeds (each "
                 "its own JPEG folder); the machine was shared with other jobs while measured, so "
                 "treat the figures as lower bounds and compare rows with each other.", "",
                 "Folder of 256 px JPEGs made from the photos demo with random crops, rotations, flips and colour "
                 "jitter. images/s = embedding phase of `build_index` (DataLoader decode + preprocess + model + "
                 "float16 shard writes); wall includes model load and the faiss index.", "",
                 "| model | precision | images | images/s | wall s |", "|---|---|---:|---:|---:|"]
        for r in stats:
            lines.append(f"| {r['model']} | {r['precision']} | {r['images']} | {fmt(r['images_per_s'], 1, False)} | "
                         f"{fmt(r['wall_s'], 1, False)} |")
        by = {(r["model"], r["precision"]): r["images_per_s"]["mean"] for r in stats}
        lines += ["", "bf16 / fp32 speed-up: " + ", ".join(
            f"{m} {by[(m, 'bf16')] / by[(m, 'fp32')]:.2f}x" for m in ("tiny", "ViT-B-32")), "",
            "`--precision auto` uses bf16 weights on CPUs with native bf16 for models of at least "
            "20M parameters (ViT-B-32: 151M) and fp32 for smaller ones (tiny: the casts cost more than "
            "they save at 32 px).", ""]
        with open(args.out, "w") as f:
            f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
