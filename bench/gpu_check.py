"""The CUDA paths, checked on one GPU (run through bench/gpu_check.sh, which also runs the DDP part under torchrun).

    python bench/gpu_check.py all [--json OUT.json]      # embedding, train steps, loader, CPU<->GPU parity
    torchrun --standalone --nproc_per_node=1 bench/gpu_check.py ddp

Checks (each prints PASS or FAIL with its figures; any FAIL, or a missing GPU, exits non-zero):

- **embed**: ViT-B/32 (random init, seed 0) in fp32 / bf16 / fp16 through clipforge's `Encoder` on CUDA and
  through open_clip eager (the same weights, exported with `export_model(..., "open_clip")`, cast to the same
  dtype) in the same process and run: images/s of each, interleaved, and the max cosine distance of each of
  ours to open_clip fp32 (goal <= 1e-3).
- **train**: a ViT-B/32 step (forward, CLIP loss, backward, fused AdamW) under autocast bf16, and fp16 with a
  GradScaler: the loss must stay finite and fall over the steps on one fixed batch.
- **loader**: a DataLoader of uint8 image batches moved to the GPU with and without pinned memory (GB/s).
- **parity**: the tiny model's image embedding and CLIP loss on CPU vs CUDA in fp32 with TF32 off
  (goal <= 1e-5 cosine distance, <= 1e-5 relative loss difference).
- **ddp**: one process group over NCCL (torchrun, world size 1): the distributed CLIP loss (gathered features)
  equals the single-process loss, and a DDP backward + step runs.

open_clip is not part of the GPU machine's image: carry its wheels (open_clip_torch, ftfy, wcwidth) and put them
on PYTHONPATH before running (see gpu_check.sh).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, machine, publish, write_results  # noqa: E402

RESULTS: list = []


def report(name: str, ok: bool, **figures) -> None:
    RESULTS.append({"check": name, "ok": bool(ok), **figures})
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"{'PASS' if ok else 'FAIL'} {name}: {shown}", flush=True)


def need_cuda():
    import torch

    if not torch.cuda.is_available():
        print("FAIL no CUDA device: torch.cuda.is_available() is False (torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}); gpu_check needs one NVIDIA GPU",
              file=sys.stderr)
        sys.exit(2)
    return torch


def _cos(a, b) -> float:
    import torch.nn.functional as F

    return float((1 - F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1)).max())


def _vit_b32(seed: int):
    import torch

    from clipforge.models import load_model
    from clipforge.models.convert.openai import tokenizer_from_bpe_file

    import open_clip  # noqa: F401  (its BPE file gives the export a real OpenAI tokenizer)

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    torch.manual_seed(seed)
    return load_model("ViT-B-32", tokenizer=tokenizer_from_bpe_file(bpe)).eval()


def check_embed(seed: int, batch: int = 128, rounds: int = 5) -> None:
    torch = need_cuda()
    import open_clip

    from clipforge.encode import Encoder
    from clipforge.models.convert.export import export_model

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    base = _vit_b32(seed)
    with tempfile.TemporaryDirectory() as tmp:
        export_model(base, "open_clip", os.path.join(tmp, "oc"))
        oc_models = {}
        for p, dt in dtypes.items():
            m, _, _ = open_clip.create_model_and_transforms(f"local-dir:{os.path.join(tmp, 'oc')}")
            oc_models[p] = m.eval().to("cuda", dt)
    ours = {p: Encoder.from_model(_vit_b32(seed), device="cuda", precision=p) for p in dtypes}
    g = torch.Generator().manual_seed(seed + 1)
    px = torch.randn(batch, 3, 224, 224, generator=g)
    px_gpu = px.cuda()

    def run_oc(p):
        with torch.no_grad():
            f = oc_models[p].encode_image(px_gpu.to(dtypes[p]))
        return f / f.norm(dim=-1, keepdim=True)

    def timed(fn):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t, out

    ref = run_oc("fp32").float().cpu()
    times = {(side, p): [] for side in ("clipforge", "open_clip") for p in dtypes}
    outs = {}
    for rnd in range(rounds + 1):  # round 0 warms up (kernels, cuBLAS handles)
        for p in dtypes:
            for side in (("clipforge", "open_clip") if rnd % 2 else ("open_clip", "clipforge")):
                fn = (lambda p=p: ours[p].encode_pixels(px)) if side == "clipforge" else (lambda p=p: run_oc(p))
                dt, out = timed(fn)
                outs[(side, p)] = out
                if rnd:
                    times[(side, p)].append(dt)
    for p in dtypes:
        cf, oc = min(times[("clipforge", p)]), min(times[("open_clip", p)])
        dist = _cos(outs[("clipforge", p)], ref)
        report(f"embed ViT-B/32 {p}", dist <= 1e-3, clipforge_images_per_s=batch / cf,
               open_clip_images_per_s=batch / oc, ratio=oc / cf, max_cos_dist_vs_open_clip_fp32=dist)


def check_train(seed: int, steps: int = 8, batch: int = 64) -> None:
    torch = need_cuda()
    from clipforge.losses import get_loss
    from clipforge.models import create_model

    for prec in ("bf16", "fp16"):
        torch.manual_seed(seed)
        model = create_model("ViT-B-32").cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        scaler = torch.amp.GradScaler("cuda") if prec == "fp16" else None
        loss_fn = get_loss("clip")
        px = torch.randn(batch, 3, 224, 224, device="cuda")
        tok = torch.randint(1, 49000, (batch, 77), device="cuda")
        tok[:, -1] = 49407  # an end token per row (the text tower pools there)
        losses, t0 = [], time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16 if prec == "bf16" else torch.float16):
                loss = loss_fn(model(px, tok)).total
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
        torch.cuda.synchronize()
        finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
        report(f"train step autocast {prec}" + (" + GradScaler" if scaler else ""), finite and losses[-1] < losses[0],
               first_loss=losses[0], last_loss=losses[-1], samples_per_s=batch * steps / (time.perf_counter() - t0))


def check_loader(batches: int = 40, batch: int = 128) -> None:
    torch = need_cuda()

    data = torch.randint(0, 255, (batch * 4, 3, 224, 224), dtype=torch.uint8)
    ds = torch.utils.data.TensorDataset(data)
    rates = {}
    for pin in (False, True):
        dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=2, pin_memory=pin, shuffle=True)
        n, t = 0, time.perf_counter()
        while n < batches:
            for (x,) in dl:
                x.cuda(non_blocking=True).float().sum()
                n += 1
                if n >= batches:
                    break
        torch.cuda.synchronize()
        rates[pin] = batches * data[:batch].numel() / (time.perf_counter() - t) / 1e9
    report("loader pinned memory", rates[True] >= 0.5 * rates[False], pinned_gb_per_s=rates[True],
           pageable_gb_per_s=rates[False])


def check_parity(seed: int) -> None:
    torch = need_cuda()
    from clipforge.losses import get_loss
    from clipforge.models import create_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(seed)
    cpu = create_model("tiny").eval()
    gpu = create_model("tiny").eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    px = torch.randn(32, 3, 32, 32)
    tok = torch.randint(1, 1000, (32, 32))
    tok[:, -1] = 1023
    loss_fn = get_loss("clip")
    with torch.no_grad():
        e_cpu, e_gpu = cpu.encode_image(px), gpu.encode_image(px.cuda())
        l_cpu, l_gpu = float(loss_fn(cpu(px, tok)).total), float(loss_fn(gpu(px.cuda(), tok.cuda())).total)
    dist, rel = _cos(e_cpu, e_gpu), abs(l_cpu - l_gpu) / abs(l_cpu)
    report("CPU vs GPU parity (fp32, TF32 off)", dist <= 1e-5 and rel <= 1e-5, embedding_max_cos_dist=dist,
           loss_rel_diff=rel)


def check_ddp(seed: int) -> None:
    torch = need_cuda()
    import torch.distributed as dist

    from clipforge.losses import get_loss
    from clipforge.models import create_model

    rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    try:
        torch.manual_seed(seed)
        model = create_model("tiny").cuda()
        px = torch.randn(16, 3, 32, 32, device="cuda")
        tok = torch.randint(1, 1000, (16, 32), device="cuda")
        tok[:, -1] = 1023
        plain = float(get_loss("clip")(model(px, tok)).total)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        gathered = get_loss("clip", distributed=True)  # through all_gather_with_grad even at world size 1
        loss = gathered(ddp(px, tok)).total
        loss.backward()
        opt.step()
        flag = torch.ones(1, device="cuda")
        dist.all_reduce(flag)
        ok = abs(float(loss) - plain) <= 1e-5 * abs(plain) and float(flag) == dist.get_world_size()
        report("DDP over NCCL (torchrun, 1 GPU)", ok, world_size=dist.get_world_size(), loss=float(loss),
               single_process_loss=plain, backend=dist.get_backend())
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["all", "embed", "train", "loader", "parity", "ddp"])
    ap.add_argument("--out", default=None, help="markdown summary page (the raw JSON goes beside it)")
    add_common_args(ap, seeds=(0,), seeds_help="seed of the random weights and inputs")
    a = ap.parse_args(argv)
    need_cuda()
    seed = a.seeds[0]
    parts = {"embed": lambda: check_embed(seed), "train": lambda: check_train(seed), "loader": check_loader,
             "parity": lambda: check_parity(seed), "ddp": lambda: check_ddp(seed)}
    for name in (["embed", "train", "loader", "parity"] if a.part == "all" else [a.part]):
        try:
            parts[name]()
        except Exception as e:  # one failed part is reported and fails the run; the others still run
            report(name, False, error=f"{type(e).__name__}: {e}"[:500])
    import torch

    lines = [f"# GPU check ({a.part})", "", f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}.", ""]
    lines += [f"- {'PASS' if r['ok'] else 'FAIL'} {r['check']}: " + ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k not in ("check", "ok"))
        for r in RESULTS]
    if a.out:
        publish("\n".join(lines) + "\n", a.out)
    write_results(a.out, {"seeds": a.seeds, "part": a.part, "results": RESULTS,
                          "device": torch.cuda.get_device_name(0), "machine": machine()}, a.json)
    return 0 if RESULTS and all(r["ok"] for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
