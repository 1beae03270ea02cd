"""Peak memory and time of one loss forward+backward at a large global batch, chunked vs dense.

Each configuration runs in its own subprocess, which reports the growth of its peak resident set size
(ru_maxrss) across the forward+backward, after the inputs exist and a small warm-up ran: the extra memory
the loss itself needs. Dense runs whose predicted peak (scaled as N² from the smallest dense run) would not
fit in a fraction of the available memory are skipped and reported with that prediction.

    python bench/bench_loss_memory.py                      # 4k/16k/32k, D 512, clip + siglip
    python bench/bench_loss_memory.py --sizes 2048 4096 --losses clip

Writes a markdown table to stdout and to docs/bench_loss_memory.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_common_args, fmt, machine_line, summarize, write_results

DOC = Path(__file__).resolve().parents[1] / "docs" / "bench_loss_memory.md"


def _one(loss_name: str, n: int, d: int, chunk: int | None, seed: int = 0) -> dict:
    """Runs inside the subprocess: one forward+backward, returns peak-RSS growth and time."""
    import torch
    import torch.nn.functional as F

    from clipforge.losses import clip_loss, siglip_loss

    def run(img, txt, scale, bias):
        if loss_name in ("clip", "clip-f64dots"):   # clip-f64dots: float64 block products (dot_precision)
            loss = clip_loss(img, txt, scale, chunk_size=chunk,
                             dot_precision="float64" if loss_name == "clip-f64dots" else "float32")
        else:
            loss = siglip_loss(img, txt, scale, bias, chunk_size=chunk)
        loss.backward()
        return loss.item()

    def leaves(m, seed):
        g = torch.Generator().manual_seed(seed)
        img = F.normalize(torch.randn(m, d, generator=g), dim=-1).requires_grad_()
        txt = F.normalize(torch.randn(m, d, generator=g), dim=-1).requires_grad_()
        return img, txt, torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)

    run(*leaves(256, seed + 1))                # warm-up: thread pools, kernels
    inputs = leaves(n, seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # bytes (Linux reports KiB)
    t0 = time.perf_counter()
    value = run(*inputs)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": max(after - before, 0), "seconds": seconds, "loss": value}


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _spawn(loss_name, n, d, chunk, seed) -> dict:
    cmd = [sys.executable, __file__, "--one", loss_name, str(n), str(d), str(chunk or 0), "--seeds", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f} GB" if b >= 2**30 else f"{b / 2**20:.0f} MB"


def bench(sizes, d, chunk, losses, mem_fraction, seeds) -> tuple[str, list]:
    rows, raw = [], []
    for loss_name in losses:
        dense_per_n2 = None       # bytes per N² measured on the smallest dense run
        for n in sorted(sizes):
            for mode in ("chunked", "dense"):
                label = f"| {loss_name} | {n:,} | {mode}{f' ({chunk})' if mode == 'chunked' else ''} |"
                if mode == "dense" and dense_per_n2 is not None:
                    need = dense_per_n2 * n * n
                    if need > mem_fraction * _available_bytes():
                        rows.append(f"{label} skipped: would need ≈ {_gb(need)} | – | – |")
                        print(rows[-1], flush=True)
                        continue
                runs = [_spawn(loss_name, n, d, chunk if mode == "chunked" else None, seed) for seed in seeds]
                peak, secs = (summarize([r[k] for r in runs], seeds) for k in ("peak_bytes", "seconds"))
                if mode == "dense" and dense_per_n2 is None:
                    dense_per_n2 = peak["mean"] / (n * n)
                raw.append({"loss": loss_name, "n": n, "mode": mode, "runs": runs, "peak_bytes": peak, "seconds": secs})
                spread = f" ± {_gb(peak['std'])}" if peak["std"] is not None else ""
                rows.append(f"{label} {_gb(peak['mean'])}{spread} | {fmt(secs, 2, False)} | {runs[0]['loss']:.6f} |")
                print(rows[-1], flush=True)
    head = [
        "# Loss memory: chunked vs dense logits",
        "",
        f"One forward+backward of the loss on random unit features, D = {d}, float32, CPU "
        f"({machine_line()}). Peak = growth of the process's peak RSS during the step "
        "(inputs and their gradients excluded). One N×N float32 matrix is 4·N² bytes: 64 MB at 4k, "
        "1 GB at 16k, 4 GB at 32k. Produced by `python bench/bench_loss_memory.py --seeds "
        f"{','.join(map(str, seeds))}`: memory and time are mean ± sample std over the seeds (each its own random "
        "features; loss value: the first seed's); the machine was shared "
        "with other jobs, so times are indicative.",
        "",
        "| loss | global batch N | logits | peak extra memory | time (s) | loss value |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n", raw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=1024, help="rows per block in the chunked runs")
    p.add_argument("--losses", nargs="+", default=["clip", "siglip"], choices=["clip", "clip-f64dots", "siglip"])
    p.add_argument("--mem-fraction", type=float, default=0.4,
                   help="skip dense runs predicted to need more than this share of available memory")
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    add_common_args(p, seeds=(0,), seeds_help="one subprocess per configuration and seed (its random features)")
    args = p.parse_args(argv)
    if args.one:
        loss_name, n, d, chunk = args.one
        print(json.dumps(_one(loss_name, int(n), int(d), int(chunk) or None, args.seeds[0])))
        return 0
    table, raw = bench(args.sizes, args.dim, args.chunk, args.losses, args.mem_fraction, args.seeds)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(table)
    os.replace(tmp, args.out)
    write_results(args.out, {"bench": "loss_memory", "seeds": args.seeds, "dim": args.dim, "rows": raw}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
