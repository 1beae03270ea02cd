"""Float32 precision of the contrastive losses against float64 ground truth, near zero loss (docs/fidelity.md).

Features are float32; the reference is the same loss computed in float64 on the same (upcast) features
(clipforge's chunked form in float64 for every row, so all rows share one ground truth).
Reported per case (batch 256, feature dim D, text = image + noise, seeds 0-4 by default (`--seeds`): median / max): relative
error of the value, and of the gradient w.r.t. both feature matrices (‖g32 − g64‖ / ‖g64‖). Runs clipforge's dense and chunked CLIP and SigLIP losses, and open_clip's ClipLoss /
SigLipLoss when open_clip is importable (run it in the reference environment for those rows):

    PYTHONPATH=src python bench/bench_loss_precision.py [--json out.json] [--cost] [--seeds 0,1,2,3,4]

`--cost` times the chunked CLIP loss (forward + backward) with float32 and with float64 block products
(`dot_precision`) at a few batch sizes, D = 512, chunk 1024, one repeat per seed (mean ± sample std) — the price of the float64 option; compare it with
the model's step time (docs/bench_train_step.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, summarize, write_results  # noqa: E402


def features(n=256, d=32, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + noise * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return img.float(), txt.float()


def losses():
    from clipforge.losses import clip_loss, siglip_loss

    out = {
        "clipforge clip dense": lambda a, b, s, bias: clip_loss(a, b, s),
        "clipforge clip chunked": lambda a, b, s, bias: clip_loss(a, b, s, chunk_size=64),
        "clipforge clip chunked f64dots": lambda a, b, s, bias: clip_loss(a, b, s, chunk_size=64,
                                                                          dot_precision="float64"),
        "clipforge siglip dense": lambda a, b, s, bias: siglip_loss(a, b, s, bias),
        "clipforge siglip chunked": lambda a, b, s, bias: siglip_loss(a, b, s, bias, chunk_size=64),
    }
    try:
        from open_clip.loss import ClipLoss, SigLipLoss
    except ImportError:
        return out
    out["open_clip ClipLoss"] = lambda a, b, s, bias: ClipLoss()(a, b, s)
    out["open_clip SigLipLoss"] = lambda a, b, s, bias: SigLipLoss()(a, b, s, bias)
    return out


def value_and_grads(fn, img, txt, scale, bias):
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    s, c = torch.tensor(scale, dtype=img.dtype), torch.tensor(bias, dtype=img.dtype)
    loss = fn(a, b, s, c)
    loss.backward()
    return loss.detach().double(), torch.cat([a.grad.flatten(), b.grad.flatten()]).double()


def run(cases, dims=(32, 256), seeds=range(5)):
    """One row per (loss, noise, dim): median and max over seeds of the relative value / gradient errors."""
    rows = []
    fns = losses()
    for name, fn in fns.items():
        siglip = "siglip" in name.lower()
        truth = fns["clipforge siglip chunked" if siglip else "clipforge clip chunked"]
        # CLIP at its clamp (s = 100); SigLIP as trained (s ≈ 30 after warm-up, b = −10).
        scale, bias = (30.0, -10.0) if siglip else (100.0, 0.0)
        for d in dims:
            for noise in cases:
                errs, gerrs, vals = [], [], []
                for seed in seeds:
                    img, txt = features(d=d, noise=noise, seed=seed)
                    # One float64 ground truth per family: clipforge's chunked form, whose float64 value
                    # does not underflow near zero loss (F.cross_entropy's float64 rounds 1e-24 to 0).
                    v64, g64 = value_and_grads(truth, img.double(), txt.double(), scale, bias)
                    v32, g32 = value_and_grads(fn, img, txt, scale, bias)
                    vals.append(float(v64))
                    errs.append(float(abs(v32 - v64) / abs(v64)))
                    gerrs.append(float((g32 - g64).norm() / g64.norm()))
                med = lambda x: sorted(x)[len(x) // 2]  # noqa: E731
                rows.append({"loss": name, "dim": d, "noise": noise, "scale": scale, "bias": bias,
                             "value64_median": med(vals), "value_rel_err_median": med(errs),
                             "value_rel_err_max": max(errs), "grad_rel_err_median": med(gerrs),
                             "grad_rel_err_max": max(gerrs)})
    return rows


def cost(sizes=(1024, 4096, 8192), d=512, chunk=1024, seeds=(0, 1, 2)):
    """Mean ± sample std (over seeds: features and repeat) of the seconds of one forward + backward of the chunked CLIP loss, float32 vs float64 block products."""
    import os
    import time

    from clipforge.losses import clip_loss

    rows = []
    for n in sizes:
        row = {"batch": n, "dim": d, "chunk": chunk}
        times = {"float32": [], "float64": []}
        for seed in seeds:
            img, txt = features(n=n, d=d, noise=0.5, seed=seed)
            for precision in times:
                a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
                t0 = time.perf_counter()
                clip_loss(a, b, torch.tensor(100.0), chunk_size=chunk, dot_precision=precision).backward()
                times[precision].append(time.perf_counter() - t0)
        for precision, ts in times.items():
            row[f"{precision}_s"] = summarize(ts, list(seeds))["mean"]
            row[f"{precision}_summary"] = summarize(ts, list(seeds))
        row["ratio_summary"] = summarize([b / a for a, b in zip(times["float32"], times["float64"])], list(seeds))
        row["ratio"] = row["ratio_summary"]["mean"]
        row["load"] = os.getloadavg()[0]
        rows.append(row)
        print(f"batch {n:6d} D {d}: float32 {row['float32_s']:.3f} s, float64 {row['float64_s']:.3f} s "
              f"(x{row['ratio']:.2f}; load {row['load']:.1f})", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", action="store_true", help="time float32 vs float64 block products instead")
    add_common_args(ap, seeds=(0, 1, 2, 3, 4), seeds_help="feature draws of every case")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.cost:
        rows = cost(seeds=args.seeds)
        write_results(None, {"bench": "loss_precision_cost", "seeds": args.seeds, "rows": rows}, args.json)
        return
    rows = run([0.05, 0.1, 0.15, 0.5], seeds=args.seeds)
    print(f"{'loss':26s} {'D':>4s} {'noise':>5s} {'loss (fp64)':>11s} {'value err med/max':>19s} {'grad err med/max':>19s}")
    for r in rows:
        print(f"{r['loss']:26s} {r['dim']:4d} {r['noise']:5.2f} {r['value64_median']:11.2e} "
              f"{r['value_rel_err_median']:9.1e}/{r['value_rel_err_max']:.1e} "
              f"{r['grad_rel_err_median']:9.1e}/{r['grad_rel_err_max']:.1e}")
    write_results(None, {"bench": "loss_precision", "seeds": args.seeds, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
