"""Token merging (ToMe / PiToMe): images/s of ViT-B/32 and ViT-B/16 at several r beside open_clip eager, timed
interleaved in one run, and the zero-shot cost at each r on trained ViT demo models.

    python bench/bench_token_merge.py --openclip-python /work/refenv/bin/python \
        --models /tmp/h30/runs/vit4/final [--rounds 5] [--out docs/bench_token_merge.md]

Speed: the same randomly initialised weights in both libraries (clipforge's, exported with
`export_model(..., "open_clip")`), the same preprocessed pixel batch, `encode_image` only (no decoding). open_clip
runs in a persistent subprocess of the environment given by --openclip-python; every round times one batch of
every configuration, open_clip included, in an order that alternates between rounds, so that a load change on
the shared machine hits all of them alike. Each configuration's ratio is taken against open_clip's time in the
same round; the page gives the median ratio over rounds and its range. Parity (r = 0 vs open_clip, same pixels)
is checked in the same run.

On a machine shared with other jobs, wall time mostly measures the scheduler: the page also gives each side's
process CPU time per batch (`time.process_time`, both threads), which waiting for a core does not inflate, and
the ratio of those.

Accuracy: zero-shot top-1 (unseen templates) on the digits demo's held-out images for each trained model given
with --models (clipforge checkpoints of ViT towers), for every r and method. The raw measurements go to the JSON
file beside --out.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, machine, machine_line, publish, write_results  # noqa: E402

PEER = r"""
import json, sys, time
import numpy as np, torch, open_clip
model_dir, px_npy, out_npy, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
model.eval()
px = torch.from_numpy(np.load(px_npy))
with torch.no_grad():
    f = model.encode_image(px)
np.save(out_npy, (f / f.norm(dim=-1, keepdim=True)).numpy())
print(json.dumps({"torch": torch.__version__, "open_clip": open_clip.__version__}), flush=True)
for line in sys.stdin:
    if line.strip() != "time":
        break
    with torch.no_grad():
        t, c = time.perf_counter(), time.process_time()
        model.encode_image(px)
        dt, dc = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({"s": dt, "cpu_s": dc}), flush=True)
"""

SPEED = {  # arch -> (batch, [(method, r)]) ; r = 0 is the exact tower
    "ViT-B-32": (16, [("tome", 0), ("tome", 2), ("tome", 3), ("tome", 4), ("tome", 6), ("tome", 8),
                      ("pitome", 3), ("pitome", 6)]),
    "ViT-B-16": (4, [("tome", 0), ("tome", 8), ("tome", 16), ("pitome", 8)]),
}
ACC_R = (0, 2, 4, 8, 12, 16, 24, 32)


def vit_gflop(v, embed_dim: int, tm, pruned: bool = True) -> float:
    """Matmul GFLOP of one ViT image forward with token merging `tm` (None: exact). Block i's qkv and attention
    see the tokens it receives, its output projection and MLP the tokens left after its merge; a class-token
    tower's last block computes one row (`pruned`, as clipforge does; open_clip: every row, no merging)."""
    from clipforge.models.token_merge import token_counts

    W, hidden, n = v.width, int(v.width * v.mlp_ratio), (v.image_size // v.patch_size) ** 2
    cls = v.pool == "cls"
    N = n + int(cls)
    after = token_counts(N, v.layers, tm, protect_first=cls)
    macs = n * 3 * v.patch_size ** 2 * W + W * embed_dim
    seen = N
    for i in range(v.layers):
        last_row = pruned and cls and i == v.layers - 1
        q_rows = 1 if last_row else seen
        out_rows = 1 if last_row else after[i]
        macs += seen * 3 * W * W + 2 * q_rows * seen * W + q_rows * W * W + out_rows * 2 * W * hidden
        seen = after[i]
    return 2 * macs / 1e9


def cos_dist(a: np.ndarray, b: np.ndarray) -> float:
    """Max over rows of the cosine distance between two embedding matrices."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.max(1 - np.sum(a * b, axis=1)))


class Peer:
    """open_clip eager in its own environment, kept running; `time()` runs one batch there."""

    def __init__(self, python: str, model_dir: str, px_npy: str, out_npy: str, threads: int, script: str):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.p = subprocess.Popen([python, script, model_dir, px_npy, out_npy, str(threads)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"open_clip side failed: {self.p.stderr.read()[-3000:]}")
        self.versions = json.loads(line)
        self.feats = np.load(out_npy)

    def time(self) -> tuple:
        """(wall seconds, CPU seconds of the process) of one batch."""
        self.p.stdin.write("time\n")
        self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        return r["s"], r["cpu_s"]

    def close(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait(timeout=60)


def _openai_bpe(python: str) -> str:
    """The BPE vocabulary file open_clip ships, in the peer's environment."""
    code = ("import os, open_clip; print(os.path.join(os.path.dirname(open_clip.__file__), "
            "'bpe_simple_vocab_16e6.txt.gz'))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def speed(arch: str, batch: int, configs, rounds: int, peer_python: str, tmp: str, threads: int,
          seed: int) -> dict:
    import torch

    from clipforge.encode import Encoder
    from clipforge.encode import cpu_has_native_bf16
    from clipforge.models import load_model
    from clipforge.models.convert.export import export_model
    from clipforge.models.convert.openai import tokenizer_from_bpe_file
    from clipforge.models.token_merge import apply_token_merge, token_merge_setting

    torch.manual_seed(seed)  # random weights; OpenAI's BPE, which open_clip's export requires for the text tower
    model = load_model(arch, tokenizer=tokenizer_from_bpe_file(_openai_bpe(peer_python))).eval()
    g = torch.Generator().manual_seed(seed + 1)
    px = torch.randn(batch, 3, model.config.vision.image_size, model.config.vision.image_size, generator=g)
    oc_dir = os.path.join(tmp, arch)
    export_model(model, "open_clip", oc_dir)
    np.save(os.path.join(tmp, "px.npy"), px.numpy())
    Path(tmp, "peer.py").write_text(PEER)
    peer = Peer(peer_python, oc_dir, os.path.join(tmp, "px.npy"), os.path.join(tmp, "oc.npy"), threads,
                str(Path(tmp, "peer.py")))
    encoders = {"fp32": Encoder.from_model(model, precision="fp32")}
    if cpu_has_native_bf16():  # what precision auto picks on such a CPU: bf16 weights (a copy of the model)
        configs = list(configs) + [("tome", 0, "bf16"), ("tome", 4 if arch == "ViT-B-32" else 8, "bf16")]
        encoders["bf16"] = Encoder.from_model(copy.deepcopy(model), precision="bf16")
    configs = [c if len(c) == 3 else (*c, "fp32") for c in configs]

    def ours(method, r, prec):
        enc = encoders[prec]

        def run():
            apply_token_merge(enc.model, r, method)
            t, c = time.perf_counter(), time.process_time()
            out = enc.encode_pixels(px)
            return (time.perf_counter() - t, time.process_time() - c), out
        return run

    def name(m, r, prec):
        return f"clipforge {m} r={r}" + ("" if prec == "fp32" else f" {prec}")

    labels = ["open_clip eager"] + [name(*c) for c in configs]
    runs = {"open_clip eager": lambda: (peer.time(), None)}  # ((wall s, CPU s), embeddings)
    runs.update({name(*c): ours(*c) for c in configs})
    feats = {}
    for label in labels:  # warm-up, and the embeddings for parity
        feats[label] = runs[label]()[1]
    times = {label: [] for label in labels}
    cpu = {label: [] for label in labels}
    for rnd in range(rounds):
        for label in (labels if rnd % 2 == 0 else labels[::-1]):
            (wall, c), _ = runs[label]()
            times[label].append(wall)
            cpu[label].append(c)
        print(json.dumps({"arch": arch, "round": rnd + 1, **{k: [round(v[-1], 3), round(cpu[k][-1], 3)]
                                                             for k, v in times.items()}}), flush=True)
    peer.close()
    apply_token_merge(model, None)
    exact = feats["clipforge tome r=0"].numpy()
    v, d = model.config.vision, model.config.embed_dim
    rows = []
    for label, (m, r, prec) in zip(labels, [(None, None, "fp32")] + list(configs)):
        ratios = [o / t for o, t in zip(times["open_clip eager"], times[label])]
        cpu_ratios = [o / t for o, t in zip(cpu["open_clip eager"], cpu[label])]
        tm = token_merge_setting(r, m) if m else None
        rows.append({"impl": label, "method": m, "r": r, "precision": prec, "times_s": times[label],
                     "cpu_s": cpu[label], "images_per_s": batch / statistics.median(times[label]),
                     "images_per_cpu_s": batch / statistics.median(cpu[label]),
                     "cpu_ratio_median": statistics.median(cpu_ratios),
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "gflop": vit_gflop(v, d, tm, pruned=m is not None),
                     "cos_vs_exact": None if m is None else cos_dist(feats[label].numpy(), exact)})
    return {"arch": arch, "seed": seed, "batch": batch, "rounds": rounds, "peer": peer.versions,
            "parity_exact_vs_open_clip": cos_dist(exact, peer.feats), "rows": rows}


def accuracy(model_dir: str, demo: dict) -> dict:
    from clipforge.encode import Encoder
    from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
    from clipforge.models import load_model
    from clipforge.models.token_merge import apply_token_merge, token_merge_setting

    model = load_model(model_dir)
    templates = Path(demo["templates_unseen"]).read_text().splitlines()
    v, d = model.config.vision, model.config.embed_dim
    base_gflop = vit_gflop(v, d, None)
    rows = []
    for method in ("tome", "pitome"):
        for r in ACC_R:
            if method == "pitome" and r == 0:
                continue
            apply_token_merge(model, r, method)
            t = time.perf_counter()
            ev = evaluate_zeroshot_classification(Encoder.from_model(model), f"imagefolder:{demo['val_dir']}",
                                                  classnames=demo["classnames"], templates=templates,
                                                  progress=False)
            tm = token_merge_setting(r, method)
            rows.append({"method": method if r else "exact", "r": r, "top1": ev["metrics"]["top1"],
                         "n": ev["metrics"]["n"], "seconds": time.perf_counter() - t,
                         "gflop": vit_gflop(v, d, tm), "flop_fraction": vit_gflop(v, d, tm) / base_gflop})
            print(json.dumps({"model": model_dir, **rows[-1]}), flush=True)
    apply_token_merge(model, None)
    return {"model": model_dir, "vision": {k: getattr(v, k) for k in ("image_size", "patch_size", "width",
                                                                       "layers", "heads", "pool")},
            "rows": rows}


def _demo(tmp: str) -> dict:
    from clipforge.data.demo_sets import build_digits

    d = build_digits(os.path.join(tmp, "digits"))  # deterministic: the held-out images the demo trains beside
    return {**d, "classnames": Path(d["classnames"]).read_text().splitlines()}


def render(res: dict, cmd: str) -> str:
    out = ["# Token merging: speed beside open_clip, accuracy cost", "", f"`{cmd}`", "",
           f"Machine: {res['machine']}. Load average before / after: {res['load'][0]:.2f} / {res['load'][1]:.2f} "
           "(the machine was shared with other jobs: every ratio compares timings taken in the same round).", ""]
    for s in res["speed"]:
        oc = s["rows"][0]
        out += [f"## {s['arch']}, batch {s['batch']}, {s['rounds']} interleaved rounds (seed {s['seed']})",
                "", f"open_clip {s['peer']['open_clip']} (torch {s['peer']['torch']}) eager vs clipforge torch, "
                f"fp32, same weights and pixels; parity of the exact tower (r = 0) vs open_clip: "
                f"{s['parity_exact_vs_open_clip']:.1e} max cosine distance.", "",
                "| implementation | images per CPU-second | vs open_clip, CPU time (median of rounds) | images/s "
                "wall (median) | vs open_clip, wall: median (range) | GFLOP / image | max cosine distance vs r = 0 |",
                "|---|---:|---:|---:|---|---:|---:|"]
        for r in s["rows"]:
            base = r["method"] is None
            ratio = "1.00x" if base else (f"{r['ratio_median']:.2f}x ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})")
            cpu_ratio = "1.00x" if base else f"**{r['cpu_ratio_median']:.2f}x**"
            cd = "–" if r["cos_vs_exact"] is None else f"{r['cos_vs_exact']:.1e}"
            out.append(f"| {r['impl']} | {r['images_per_cpu_s']:.2f} | {cpu_ratio} | {r['images_per_s']:.2f} | "
                       f"{ratio} | {r['gflop']:.2f} | {cd} |")
        out.append("")
    for a in res["accuracy"]:
        v = a["vision"]
        out += [f"## Zero-shot cost: {a['model']}", "",
                f"ViT image {v['image_size']} px, patch {v['patch_size']}, width {v['width']}, {v['layers']} "
                f"blocks, {v['pool']} pooling; digits demo, {a['rows'][0]['n']} held-out images, unseen templates.",
                "", "| method | r | zero-shot top-1 | change (points) | GFLOP fraction of exact |",
                "|---|---:|---:|---:|---:|"]
        base = a["rows"][0]["top1"]
        for r in a["rows"]:
            out.append(f"| {r['method']} | {r['r']} | {r['top1']:.4f} | {100 * (r['top1'] - base):+.1f} | "
                       f"{r['flop_fraction']:.2f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openclip-python", required=True, help="python of an environment with open_clip")
    ap.add_argument("--models", nargs="*", default=[], help="trained clipforge ViT checkpoints for the accuracy part")
    ap.add_argument("--archs", default="ViT-B-32,ViT-B-16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None, help="markdown page (the raw JSON goes beside it)")
    add_common_args(ap, seeds=(0,), seeds_help="seeds of the speed part's random weights and pixels")
    a = ap.parse_args(argv)
    import torch

    m = machine()
    res = {"machine": machine_line(m), "seeds": a.seeds, "speed": [], "accuracy": []}
    load = m["load_avg"][0]
    with tempfile.TemporaryDirectory(prefix="bench-tome-") as tmp:
        demo = _demo(tmp) if a.models else None
        for model in a.models:
            res["accuracy"].append(accuracy(model, demo))
        for seed in a.seeds:
            for arch in a.archs.split(","):
                batch, configs = SPEED[arch]
                res["speed"].append(speed(arch, batch, configs, a.rounds, a.openclip_python, tmp,
                                          torch.get_num_threads(), seed))
    res["load"] = [load, os.getloadavg()[0]]
    res["time"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = ("python bench/bench_token_merge.py --openclip-python ... "
           + "".join(f"--models {x} " for x in a.models) + f"--rounds {a.rounds}")
    publish(render(res, cmd) + f"\nRun finished {res['time']}.\n", a.out)
    write_results(a.out, res, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
