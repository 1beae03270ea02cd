"""A/B the encoding path of two clipforge source trees in the same run (e.g. before and after a refactor).

    python bench/bench_encode_ab.py --a /path/to/old/src --b src [--seeds 0,1,2] [--json PATH]

Each round runs, in a fresh process per tree and alternating A, B so both see the same machine load:
zero-shot classification of 60 PNGs (320x240, 10 classes x 7 templates) and an index build of 48 JPEGs
(640x480, one decode worker), both with the same randomly initialised ViT-B-32 in fp32, batch 32, 2 threads.
One round per seed (the seed draws the model's weights). Prints one JSON line per run and the mean ± sample
std per tree; --json writes the raw runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import add_common_args, fmt, summarize, write_results

RUN = r'''
import json, sys, tempfile, time
from pathlib import Path
import torch
torch.set_num_threads(2)
from clipforge.data.sources import open_source
from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
from clipforge.models import create_model
from clipforge.retrieval.build import build_index
data = Path(sys.argv[1])
torch.manual_seed(int(sys.argv[2]))
model = create_model("ViT-B-32").eval()
t = time.perf_counter()
res = evaluate_zeroshot_classification(model, open_source(f"imagefolder:{data / 'cls'}"),
                                       classnames=[str(i) for i in range(10)], templates="openai_imagenet_7",
                                       batch_size=32, progress=False)
t_eval = time.perf_counter() - t
ck = Path(tempfile.mkdtemp()) / "ck"
model.save_pretrained(ck)
t = time.perf_counter()
s = build_index(f"files:{data / 'jpg'}", str(ck), Path(tempfile.mkdtemp()) / "idx", batch_size=32, workers=1,
                precision="fp32", progress=False)
print(json.dumps({"eval_s": round(t_eval, 2), "top1": res["metrics"]["top1"],
                  "index_s": round(time.perf_counter() - t, 2), "images_per_s": round(s["images_per_s"], 2)}))
'''


def make_data(root: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        (root / "cls" / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(root / "cls" / str(c) / f"{i}.png")
    (root / "jpg").mkdir(exist_ok=True)
    y, x = np.mgrid[0:480, 0:640]
    for i in range(48):
        arr = np.stack([(x * (i + 1)) % 256, (y * 3 + i) % 256, (x + y) % 256], -1).astype(np.uint8)
        Image.fromarray(arr).save(root / "jpg" / f"{i:03d}.jpg", quality=90)
        (root / "jpg" / f"{i:03d}.txt").write_text(f"picture number {i}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="source tree A (the folder holding the clipforge package)")
    ap.add_argument("--b", required=True, help="source tree B")
    add_common_args(ap, seeds_help="one round per seed")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp())
    make_data(data)
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for seed in args.seeds:
        for name, src in (("A", args.a), ("B", args.b)):
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
            out = subprocess.run([sys.executable, "-c", RUN, str(data), str(seed)], env=env, capture_output=True, text=True,
                                 check=True, cwd=tempfile.gettempdir()).stdout.strip().splitlines()[-1]
            runs[name].append(json.loads(out))
            print(name, out, flush=True)
    summary = {name: {k: summarize([r[k] for r in rs], args.seeds) for k in ("eval_s", "index_s", "images_per_s")}
               for name, rs in runs.items()}
    for name, s in summary.items():
        print(name, {k: fmt(v) for k, v in s.items()})
    write_results(None, {"bench": "encode_ab", "seeds": args.seeds, "a": args.a, "b": args.b, "runs": runs,
                         "summary": summary}, args.json)


if __name__ == "__main__":
    main()
