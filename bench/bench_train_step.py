"""Train-step throughput: clipforge vs open_clip at equal settings, side by side in one run.

Each measurement runs in its own subprocess (so the two libraries never share a process or warm caches):
clipforge in this environment, open_clip in the environment given by --openclip-python (open_clip needs
torchvision, which imports only beside torch 2.14.1 here). A step = forward of both towers on synthetic
pixels/tokens, CLIP loss, backward, AdamW step. Achieved GFLOP/s counts 3x the forward matmul FLOPs
(fwd + bwd) over the positions each implementation computes (clipforge trims the padding after the last end
token and computes only the pooled row in each tower's last block, open_clip runs every position), against a bf16/fp32 matmul peak measured in the same run.

    python bench/bench_train_step.py --openclip-python /work/refenv/bin/python --out docs/bench_train_step.md [--seeds 0,1,2]
    python bench/bench_train_step.py --worker clipforge --model tiny --precision bf16 --batch 256   # one cell

Each seed is one repeat: it draws the model's initial weights and the synthetic batch, and the two libraries
alternate (AB, BA, AB...) over the seeds; the summary is mean ± sample std over the seeds (bench/common.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from common import add_common_args, fmt, machine, machine_line, publish, summarize, write_results

# The tiny config in open_clip terms (same widths, depths, heads, patching, mean pooling, context, vocab).
OC_TINY = dict(embed_dim=64,
               vision_cfg=dict(image_size=32, patch_size=4, width=64, layers=2, head_width=32, pool_type="avg",
                               final_ln_after_pool=False),
               text_cfg=dict(context_length=32, vocab_size=1024, width=64, heads=2, layers=2))


def _blocks_flops(n, width, layers, mlp_ratio, pruned_last):
    """Matmul FLOPs of `layers` blocks over n positions; `pruned_last`: the last block computes only the pooled
    row past its qkv projection (clipforge's pooled towers)."""
    row = 2 * (width * width + 2 * mlp_ratio * width * width)  # output projection + MLP (two layers), per row
    full = n * (2 * 3 * width * width + row) + 4 * n * n * width
    last = n * 2 * 3 * width * width + 1 * row + 4 * n * width if pruned_last else full
    return (layers - 1) * full + last


def vit_flops(image_size, patch, width, layers, mlp_ratio, tokens_extra=1, pruned_last=False):
    patches = (image_size // patch) ** 2
    n = patches + tokens_extra  # + the class token, which the patch convolution does not make
    return _blocks_flops(n, width, layers, mlp_ratio, pruned_last) + 2 * patches * 3 * patch * patch * width


def text_flops(ctx, width, layers, mlp_ratio=4, pruned_last=False):
    return _blocks_flops(ctx, width, layers, mlp_ratio, pruned_last)


def forward_flops(model_name: str, text_tokens: int, pruned_last: bool = False) -> float:
    """Forward matmul FLOPs per sample with the text tower run over `text_tokens` positions: the tokens an
    implementation actually computes (clipforge trims a batch's padding after the last end token, open_clip
    runs the whole context), so GFLOP/s is each one's real matmul rate and never exceeds the peak.
    `pruned_last`: clipforge's last blocks compute only the pooled row (the class token, the end token); the
    tiny ViT is mean-pooled, so its image tower runs every row."""
    if model_name == "tiny":
        return vit_flops(32, 4, 64, 2, 4, 0) + text_flops(text_tokens, 64, 2, pruned_last=pruned_last)
    if model_name == "ViT-B-32":
        return (vit_flops(224, 32, 768, 12, 4, pruned_last=pruned_last)
                + text_flops(text_tokens, 512, 12, pruned_last=pruned_last))
    raise ValueError(f"no FLOP model for {model_name}")


def worker(impl: str, model_name: str, precision: str, batch: int, steps: int, warmup: int,
           caption_tokens: int = 0, seed: int = 0) -> dict:
    import torch

    torch.manual_seed(seed)
    if impl == "clipforge":
        from clipforge.losses import get_loss
        from clipforge.models import create_model

        model = create_model(model_name)
        loss_mod = get_loss("clip")
        ctx, vocab, size = model.config.text.context_length, model.config.text.vocab_size, model.config.image_size

        def step_loss(px, ids):
            return loss_mod(model(px, ids)).total
    else:
        import open_clip
        from open_clip.loss import ClipLoss

        if model_name == "tiny":
            from open_clip.model import CLIP

            model = CLIP(**OC_TINY)
        else:
            model = open_clip.create_model(model_name)
        loss_mod = ClipLoss()
        ctx, vocab = model.context_length, model.vocab_size
        size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size

        def step_loss(px, ids):
            img, txt, scale = model(px, ids)[:3]
            return loss_mod(img, txt, scale)
    model.train()
    if impl == "clipforge":  # each library's own trainer choice: clipforge's make_optimizer, open_clip's main.py
        from clipforge.train.optim import make_optimizer

        opt = make_optimizer(model, 1e-4, 0.2, (0.9, 0.98), 1e-6)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    px = torch.randn(batch, 3, size, size)
    # caption_tokens = 0: every row fills the context; N: rows of N tokens (end token last) + zero padding, like
    # real captions. Both libraries get the same tensor.
    n = caption_tokens or ctx
    ids = torch.zeros(batch, ctx, dtype=torch.long)
    ids[:, :n] = torch.randint(1, vocab - 1, (batch, n))
    ids[:, n - 1] = vocab - 1
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with ac:
            loss = step_loss(px, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    text_run = n if impl == "clipforge" else ctx  # clipforge drops the padding after the last end token
    return {"impl": impl, "model": model_name, "precision": precision, "batch": batch, "steps": steps,
            "median_step_s": med, "samples_per_s": batch / med,
            "text_tokens_run": text_run, "gflops": 3 * forward_flops(model_name, text_run, impl == "clipforge") * batch / med / 1e9,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "caption_tokens": n, "seed": seed}


def matmul_peak(dtype_name: str) -> float:
    import torch

    dt = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
    for _ in range(2):
        a @ b
    t0, n = time.perf_counter(), 8
    for _ in range(n):
        a @ b
    return 2 * 2048 ** 3 * n / (time.perf_counter() - t0) / 1e9


def run_cell(python: str, impl: str, model: str, precision: str, batch: int, steps: int, warmup: int,
             caption_tokens: int, seed: int) -> dict:
    cmd = [python, __file__, "--worker", impl, "--model", model, "--precision", precision, "--batch", str(batch),
           "--steps", str(steps), "--warmup", str(warmup), "--caption-tokens", str(caption_tokens),
           "--seeds", str(seed)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        return {"impl": impl, "model": model, "precision": precision, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def native_precisions() -> list[str]:
    """fp32, plus bf16 where the CPU multiplies bf16 natively (AVX-512 bf16 / AMX): elsewhere it is emulated."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
    from clipforge.encode import cpu_has_native_bf16

    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["clipforge", "open_clip"])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--precisions", default=None,
                    help="comma list (default: the ones this CPU runs natively: fp32, + bf16 with AVX-512 bf16)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--openclip-python", default=None, help="python of an environment with open_clip installed")
    ap.add_argument("--out", default=None, help="markdown file for the results table")
    ap.add_argument("--cells", default="tiny:256,ViT-B-32:32")
    ap.add_argument("--caption-tokens", type=int, default=16,
                    help="tokens per caption incl. start/end (0 = fill the context); real captions are ~10-20")
    add_common_args(ap, seeds_help="one consecutive run per cell and seed (weights and batch drawn from it; the "
                                   "two libraries alternate AB, BA, AB...)")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.model, a.precision, a.batch, a.steps, a.warmup, a.caption_tokens,
                                a.seeds[0])))
        return
    precisions = a.precisions.split(",") if a.precisions else native_precisions()
    load0 = os.getloadavg()[0]
    peaks = {p: matmul_peak(p) for p in precisions}
    rows = []
    for cell in a.cells.split(","):
        model, batch = cell.split(":")
        steps, warmup = (20, 5) if model == "tiny" else (4, 1)
        for precision in precisions:
            impls = [("clipforge", sys.executable)] + ([("open_clip", a.openclip_python)] if a.openclip_python else [])
            for rep, seed in enumerate(a.seeds):
                pair = {}
                for impl, py in (impls if rep % 2 == 0 else impls[::-1]):
                    row = run_cell(py, impl, model, precision, int(batch), steps, warmup, a.caption_tokens, seed)
                    row["peak_gflops"], row["run"] = peaks[precision], rep + 1
                    print(json.dumps(row), flush=True)
                    pair[impl] = row
                if "samples_per_s" in pair.get("open_clip", {}) and "samples_per_s" in pair.get("clipforge", {}):
                    pair["clipforge"]["ratio"] = pair["clipforge"]["samples_per_s"] / pair["open_clip"]["samples_per_s"]
                rows += [pair[i] for i, _ in impls]
    load1 = os.getloadavg()[0]
    lines = ["| model | batch | precision | run | impl | samples/s | GFLOP/s | % of matmul peak | vs open_clip |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['precision']} | {r.get('run', '')} | {r['impl']} | error: {r['error']} | | | |")
            continue
        ratio = f"**{r['ratio']:.2f}x**" if "ratio" in r else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['run']} | {r['impl']} (torch {r['torch']}) | "
                     f"{r['samples_per_s']:.1f} | {r['gflops']:.0f} | {100 * r['gflops'] / r['peak_gflops']:.0f}% | {ratio} |")
    summary, stats = [], {}
    for cell in a.cells.split(","):
        model = cell.split(":")[0]
        for precision in precisions:
            for impl in ("clipforge", "open_clip"):
                rs = [r for r in rows if r.get("model") == model and r.get("precision") == precision
                      and r.get("impl") == impl and "samples_per_s" in r]
                if rs:
                    s = summarize([r["samples_per_s"] for r in rs], [r["seed"] for r in rs])
                    stats[f"{model} {precision} {impl} samples_per_s"] = s
                    summary.append(f"- {model} {precision} {impl}: {fmt(s, 1)} samples/s")
            rs = [r for r in rows if r.get("model") == model and r.get("precision") == precision and "ratio" in r]
            if rs:
                s = summarize([r["ratio"] for r in rs], [r["seed"] for r in rs])
                stats[f"{model} {precision} ratio"] = s
                summary.append(f"- {model} {precision}: clipforge / open_clip = {fmt(s, 2)}x "
                               f"(min {min(s['values']):.2f}x)")
    head = (f"`python bench/bench_train_step.py --openclip-python ... --seeds {','.join(map(str, a.seeds))} "
            f"--caption-tokens {a.caption_tokens}` on {machine_line()}; measured matmul peak (2048², torch's threads): "
            + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peaks.items())
            + f". Precisions: {', '.join(precisions)} (the ones this CPU runs natively). Load average before / after: "
            f"{load0:.2f} / {load1:.2f}. Text rows: {a.caption_tokens or 'full context'} tokens. clipforge runs torch "
            "2.13.0, open_clip its own environment's torch (shown per row): different torch versions.")
    table = "\n".join(["# Train-step throughput", "", head, "", *lines, "", *summary, ""])
    publish(table, a.out)
    write_results(a.out, {"bench": "train_step", "seeds": a.seeds, "cells": a.cells, "precisions": precisions,
                          "peaks_gflops": peaks, "rows": rows, "summary": stats, "machine": machine()}, a.json)


if __name__ == "__main__":
    main()
