"""Where a feature-cached projector step spends its time (issue 30: is 1,000 steps/s at batch 256 reachable?).

    python bench/bench_feature_cache_profile.py [--dims 64,256] [--steps 300] [--out docs/bench_feature_cache_profile.md]

The trainer's own model (lite0-minilm, both towers locked: only the two projection heads and the logit scale
train) on cached-feature batches of the real shapes (1280-d image, 384-d text features, batch 256). Each
variant runs the same number of steps, the variants alternating within every round (best of the rounds kept):

- trainer step: what `train/loop.py` does per step (lr set on every group, forward of the heads, CLIP loss,
  backward, grad-norm clip, fused AdamW, zero_grad, logit-scale clamp, the loss read back as a float);
- the same without the grad-norm clip, with foreach / for-loop AdamW instead of fused, and with the forward and
  loss under `torch.compile` (compile time reported apart);
- parts timed alone: forward + loss, backward, clip, optimizer step.

The FLOP floor: forward + backward of both heads is 3 * 2 * 256 * (1280 + 384) * D FLOP per step.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, machine, machine_line, publish, write_results  # noqa: E402


def build(d: int, seed: int, opt_kind: str = "fused"):
    import torch

    from clipforge.losses import clamp_logit_scale_, get_loss
    from clipforge.models import create_model
    from clipforge.train.optim import lock_tower

    torch.manual_seed(seed)
    model = create_model("lite0-minilm", embed_dim=d)
    lock_tower(model.visual, 0)
    lock_tower(model.text, 0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    kw = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[opt_kind]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.2},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=1e-4, **kw)
    g = torch.Generator().manual_seed(seed)
    batch = {"image_features": torch.randn(256, 1280, generator=g), "text_features": torch.randn(256, 384, generator=g)}
    return model, opt, params, get_loss("clip"), batch, clamp_logit_scale_


def step_fn(d: int, seed: int, *, opt_kind="fused", clip=True, compiled=False):
    import torch

    from clipforge.train.step import forward_loss

    model, opt, params, loss_fn, batch, clamp = build(d, seed, opt_kind)
    fwd = (lambda: forward_loss(model, loss_fn, batch, torch.device("cpu")))
    if compiled:
        inner = torch.compile(lambda imf, txf: loss_fn(model(image_features=imf, text_features=txf)).total)
        fwd_c = (lambda: inner(batch["image_features"], batch["text_features"]))
    lr = [1e-4]

    def step():
        for grp in opt.param_groups:
            grp["lr"] = lr[0]
        total = fwd_c() if compiled else fwd().total
        total.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clamp(model)
        return float(total.detach())
    return step, (model, opt, params, loss_fn, batch, fwd)


def rate(fn, steps: int) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - t)


def parts(d: int, seed: int, steps: int) -> dict:
    """Seconds per step of each part, timed alone (the others run but are not counted)."""
    import torch

    _, (model, opt, params, _, _, fwd) = step_fn(d, seed)
    acc = {"forward+loss": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}
    for i in range(steps + 10):
        t0 = time.perf_counter()
        total = fwd().total
        t1 = time.perf_counter()
        total.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= 10:
            for k, v in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                acc[k] += v
    return {k: v / steps for k, v in acc.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="64,256")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time the step with torch.compile")
    ap.add_argument("--out", default=None)
    add_common_args(ap, seeds=(0,), seeds_help="seed of the heads' weights and the batch")
    a = ap.parse_args(argv)
    m = machine()
    seed = a.seeds[0]
    rows = []
    for d in map(int, a.dims.split(",")):
        variants = {"trainer step (fused AdamW)": step_fn(d, seed)[0],
                    "no grad clip": step_fn(d, seed, clip=False)[0],
                    "foreach AdamW": step_fn(d, seed, opt_kind="foreach")[0],
                    "for-loop AdamW": step_fn(d, seed, opt_kind="for-loop")[0]}
        compile_s = None
        if a.compile:
            t = time.perf_counter()
            fn = step_fn(d, seed, compiled=True)[0]
            fn()
            compile_s = time.perf_counter() - t
            variants["torch.compile forward+loss"] = fn
        best = {k: 0.0 for k in variants}
        for rnd in range(a.rounds):
            for k in (list(variants) if rnd % 2 == 0 else list(variants)[::-1]):
                best[k] = max(best[k], rate(variants[k], a.steps))
        gflop = 3 * 2 * 256 * (1280 + 384) * d / 1e9
        row = {"dim": d, "gflop_per_step": gflop, "steps_per_s": best, "parts_s": parts(d, seed, a.steps),
               "compile_s": compile_s, "flop_ceiling_steps_per_s": m["fp32_matmul_gflops"] / gflop}
        rows.append(row)
        print(row, flush=True)
    lines = ["# Feature-cached projector step: where the time goes", "",
             f"Machine: {machine_line(m)}. `python bench/bench_feature_cache_profile.py --dims {a.dims} --steps "
             f"{a.steps} --rounds {a.rounds}{' --compile' if a.compile else ''}`; batch 256; best of "
             f"{a.rounds} alternating rounds.", "",
             "| embed dim | variant | steps/s | vs trainer step |", "|---:|---|---:|---:|"]
    for r in rows:
        base = r["steps_per_s"]["trainer step (fused AdamW)"]
        for k, v in r["steps_per_s"].items():
            lines.append(f"| {r['dim']} | {k} | {v:.0f} | {v / base:.2f}x |")
        lines.append(f"| {r['dim']} | matmul ceiling ({r['gflop_per_step']:.3f} GFLOP at the measured peak) | "
                     f"{r['flop_ceiling_steps_per_s']:.0f} | {r['flop_ceiling_steps_per_s'] / base:.2f}x |")
    lines += ["", "| embed dim | forward + loss (ms) | backward (ms) | grad clip (ms) | AdamW step + zero_grad (ms) |",
              "|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = r["parts_s"]
        lines.append(f"| {r['dim']} | {1e3 * p['forward+loss']:.3f} | {1e3 * p['backward']:.3f} | "
                     f"{1e3 * p['clip']:.3f} | {1e3 * p['optimizer']:.3f} |")
    publish("\n".join(lines) + "\n", a.out)
    write_results(a.out, {"seeds": a.seeds, "rows": rows, "machine": m}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
