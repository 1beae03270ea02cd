"""Images per second per CPU core for clipforge.encode, and what the Ray executor costs beside the local one.

    python bench/bench_scale_throughput.py [--seeds 0,1,2] [--json PATH] [--models tiny,ViT-B-32] [--parts model,text,decode,e2e]

1. Model throughput: `Encoder.encode_pixels` on preprocessed (32, 3, S, S) batches, fp32, with 1 and 2 torch
   threads; each model and thread count measured once per seed (the seed draws the weights and inputs),
   alternating, so all see the same load; the summary is mean ± sample std over the seeds.
   Reports wall images/s and images per CPU-second (process CPU time over all threads): the second is the
   per-core figure a dedicated core would give, and it is far less sensitive to other processes on a shared
   machine than the wall figure.
2. Text tower (`--parts text`): `Encoder.encode_texts` on 64 LAION-like captions (8-20 words), fp32, 1 thread:
   captions per CPU-second (embed-dataset encodes each sample's first caption too).
3. Decode + preprocess (`--parts decode`): `open_image` + the model's preprocess of JPEGs of 640x480 and
   256x256 (img2dataset's usual LAION resize), 1 thread: images per CPU-second: the CPU work a GPU worker
   needs per image, whatever the GPU.
4. End to end (decode + preprocess + encode + commit): `embed_dataset` of 48 JPEGs (640x480) with the local
   executor (one process, 2 threads, 1 decode worker) and the Ray executor (a local 2-CPU cluster on
   127.0.0.1, 2 actors x 1 CPU, decode in-actor), same model, same data, same run. Ray's cluster start and
   actor start-up are reported separately from the steady state.
Prints one JSON line per measurement and a summary; writes only temporary files.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import add_common_args, fmt, machine, summarize, write_results
from pathlib import Path

MODEL_RUN = r'''
import json, sys, time
import torch
threads, name, batches = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
from clipforge.encode import Encoder
enc = Encoder.load(name, precision="fp32", device="cpu")
size = enc.model.config.vision.image_size
x = torch.randn(32, 3, size, size)
enc.encode_pixels(x)  # warm-up
w, c = time.perf_counter(), time.process_time()
for _ in range(batches):
    enc.encode_pixels(x)
w, c = time.perf_counter() - w, time.process_time() - c
n = 32 * batches
print(json.dumps({"model": name, "threads": threads, "images": n, "wall_s": round(w, 2), "cpu_s": round(c, 2),
                  "images_per_s": round(n / w, 2), "images_per_cpu_s": round(n / c, 2)}))
'''

E2E_RUN = r'''
import json, os, sys, tempfile, time
import torch
executor, data, model = sys.argv[1], sys.argv[2], sys.argv[3]
from clipforge.retrieval.embed_dataset import embed_dataset
opts, t0 = {}, time.perf_counter()
if executor == "ray":
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    opts = {"num_workers": 2}
else:
    torch.set_num_threads(2)
t_start = time.perf_counter() - t0
t = time.perf_counter()
s = embed_dataset(f"files:{data}", model, tempfile.mkdtemp() + "/e", batch_size=16, shard_size=16,
                  workers=0 if executor == "ray" else 1, precision="fp32", progress=False, executor=executor,
                  executor_options=opts)
total = time.perf_counter() - t
print(json.dumps({"executor": executor, "model": model, "images": s["embedded"], "cluster_start_s": round(t_start, 1),
                  "job_s": round(total, 1), "embed_loop_s": s["seconds"], "images_per_s": s["images_per_s"]}))
'''

TEXT_RUN = r'''
import json, random, sys, time
import torch
torch.set_num_threads(1)
name, rounds = sys.argv[1], int(sys.argv[2])
from clipforge.encode import Encoder
enc = Encoder.load(name, precision="fp32", device="cpu")
rng = random.Random(0)
words = "a photo of the red blue small large dog cat house car tree beach city street old new vintage poster".split()
texts = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) for _ in range(64)]
enc.encode_texts(texts[:8])  # warm-up
w, c = time.perf_counter(), time.process_time()
for _ in range(rounds):
    enc.encode_texts(texts, batch_size=64)
w, c = time.perf_counter() - w, time.process_time() - c
n = 64 * rounds
print(json.dumps({"text_model": name, "threads": 1, "captions": n, "wall_s": round(w, 2), "cpu_s": round(c, 2),
                  "captions_per_s": round(n / w, 2), "captions_per_cpu_s": round(n / c, 2)}))
'''

DECODE_RUN = r'''
import io, json, sys, time
import numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
name, w_px, h_px = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from clipforge.encode import Encoder
from clipforge.encode.images import open_image
pre = Encoder.load(name, precision="fp32", device="cpu").preprocess
y, x = np.mgrid[0:h_px, 0:w_px]
blobs = []
for i in range(40):
    arr = np.stack([(x * (i + 1)) % 256, (y * 3 + i) % 256, (x + y) % 256], -1).astype(np.uint8)
    b = io.BytesIO(); Image.fromarray(arr).save(b, "JPEG", quality=90); blobs.append(b.getvalue())
pre(open_image(blobs[0]))
w, c = time.perf_counter(), time.process_time()
for b in blobs * 3:
    pre(open_image(b))
w, c = time.perf_counter() - w, time.process_time() - c
n = 3 * len(blobs)
print(json.dumps({"decode": f"{w_px}x{h_px}", "model": name, "images": n, "wall_s": round(w, 2), "cpu_s": round(c, 2),
                  "images_per_s": round(n / w, 1), "images_per_cpu_s": round(n / c, 1)}))
'''


def run(code: str, seed: int, *args: str) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    code = f"import torch\ntorch.manual_seed({seed})\n" + code  # the seed draws the weights and the inputs
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["load1"], out["seed"] = round(os.getloadavg()[0], 1), seed
    print(json.dumps(out), flush=True)
    return out


def make_jpegs(root: Path, n: int = 48) -> None:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:480, 0:640]
    for i in range(n):
        arr = np.stack([(x * (i + 1)) % 256, (y * 3 + i) % 256, (x + y) % 256], -1).astype(np.uint8)
        Image.fromarray(arr).save(root / f"{i:03d}.jpg", quality=90)
        (root / f"{i:03d}.txt").write_text(f"a synthetic pattern number {i}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,ViT-B-32")
    ap.add_argument("--e2e-model", default="ViT-B-32")
    ap.add_argument("--parts", default="model,text,decode,e2e", help="which measurements (comma-separated)")
    ap.add_argument("--skip-ray", action="store_true", help="same as leaving e2e out of --parts")
    add_common_args(ap, seeds_help="one round per seed")
    args = ap.parse_args()
    parts = set(args.parts.split(",")) - ({"e2e"} if args.skip_ray else set())
    print(json.dumps({"machine": os.uname().machine, "cpus": os.cpu_count(), "load1_start": os.getloadavg()[0]}))
    rows, texts, decodes = [], [], []
    for seed in args.seeds:
        for name in args.models.split(","):
            if "model" in parts:
                for threads in (1, 2):
                    rows.append(run(MODEL_RUN, seed, str(threads), name, "3" if name != "tiny" else "30"))
            if "text" in parts:
                texts.append(run(TEXT_RUN, seed, name, "2" if name != "tiny" else "20"))
        if "decode" in parts:
            for size in ("640 480", "256 256"):
                decodes.append(run(DECODE_RUN, seed, args.e2e_model, *size.split()))
    e2e = []
    if "e2e" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            make_jpegs(Path(tmp) / "jpg")
            for seed in args.seeds:
                for ex in ("local", "ray"):
                    e2e.append(run(E2E_RUN, seed, ex, str(Path(tmp) / "jpg"), args.e2e_model))
    summary = {}

    def stat(label: str, rs: list, key: str) -> str:
        summary[f"{label} {key}"] = summarize([x[key] for x in rs], [x["seed"] for x in rs])
        return fmt(summary[f"{label} {key}"], 2, False)

    print(f"summary (mean ± sample std over seeds {','.join(map(str, args.seeds))}):")
    for name in args.models.split(","):
        t = [x for x in texts if x["text_model"] == name]
        if t:
            print(f"  {name:9s} text tower, 1 thread: {stat(name + ' text', t, 'captions_per_cpu_s')} captions per "
                  "CPU-second")
        for threads in (1, 2):
            r = [x for x in rows if x["model"] == name and x["threads"] == threads]
            if r:
                label = f"{name} {threads} threads"
                print(f"  {name:9s} {threads} thread(s): {stat(label, r, 'images_per_s')} images/s wall, "
                      f"{stat(label, r, 'images_per_cpu_s')} images per CPU-second")
    for size in ("640x480", "256x256"):
        d = [x for x in decodes if x["decode"] == size]
        if d:
            print(f"  decode + preprocess {size}, 1 thread: {stat('decode ' + size, d, 'images_per_cpu_s')} images "
                  "per CPU-second")
    for ex in ("local", "ray"):
        r = [x for x in e2e if x["executor"] == ex]
        if r:
            print(f"  end to end {ex:5s}: {stat(ex, r, 'images_per_s')} images/s in the embedding loop, job "
                  f"{stat(ex, r, 'job_s')} s, cluster start {stat(ex, r, 'cluster_start_s')} s")
    print(json.dumps({"load1_end": os.getloadavg()[0]}))
    write_results(None, {"bench": "scale_throughput", "seeds": args.seeds, "model": rows, "text": texts,
                         "decode": decodes, "e2e": e2e, "summary": summary, "machine": machine()}, args.json)


if __name__ == "__main__":
    main()
