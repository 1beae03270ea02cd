"""The adaptation benchmark: adapt the digits-trained demo model (handwritten digits) to printed digits in
matplotlib's fonts (`clipforge data demo fonts`), k shots per class, and record top-1 on the fonts test images
for zero-shot, linear probe, Tip-Adapter, Tip-Adapter-F, CoOp, GIST (the k-shot protocol, every method on the
same splits), LoRA and full fine-tuning (through the trainer, on the same k-shot support images with their
captions). `--reverse` swaps the domains (a fonts-trained model adapted to handwritten digits); `--rotate DEG`
adapts the digits-trained model to the handwritten digits rotated by DEG degrees (a domain nobody tuned on).

    python bench/bench_adapt.py --out docs/bench_adapt.md [--base-steps 150] [--shots 1,4,16] [--seeds 0,1]
        [--base RUN/final] [--train-shots 16] [--train-steps 60] [--reverse | --rotate 90] [--work DIR]

Every figure is measured in this one run on this machine; the report records `uptime`'s load and the wall
times, so runs on a busy machine read as such.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import add_common_args, publish, summarize, write_results  # noqa: E402

HEADS = ["zero-shot", "linear-probe", "tip-adapter", "tip-adapter-f", "coop", "gist"]


def train_base(sets: dict, work: Path, steps: int, seed: int) -> str:
    """The demo-digits recipe on the source domain; returns the final checkpoint directory."""
    import yaml

    from clipforge.train.config import apply_overrides, config_from_dict, read_config_text
    from clipforge.train.loop import train

    cfg = yaml.safe_load(read_config_text("demo-digits"))
    over = [f"data.train=jsonl:{sets['train_manifest']}", f"data.val=imagefolder:{sets['val_dir']}",
            f"data.val_classnames={sets['classnames']}", f"data.val_templates={sets['templates_unseen']}",
            f"run.steps={steps}", f"run.seed={seed}", "run.eval_every=0", "run.progress=false",
            f"schedule.warmup_steps={min(20, steps // 5)}"]
    out = work / "base"
    if not (out / "final").is_dir():
        train(config_from_dict(apply_overrides(cfg, over)).validate(), out)
    return str(out / "final")


def rotated_set(sets: dict, degrees: float, out: Path) -> dict:
    """A copy of a demo set (training manifest and val folder) with every image rotated by `degrees`."""
    from PIL import Image

    def rot(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).rotate(degrees).save(dst)

    root = Path(sets["train_manifest"]).parent
    lines = []
    for line in Path(sets["train_manifest"]).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rot(root / r["image"], out / r["image"])
            lines.append(json.dumps(r))
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    val = Path(sets["val_dir"])
    for f in sorted(val.rglob("*.png")):
        rot(f, out / "val" / f.relative_to(val))
    return dict(sets, root=str(out), train_manifest=str(out / "train.jsonl"), val_dir=str(out / "val"))


def subset_manifest(sets: dict, idx, path: Path) -> str:
    rows = [json.loads(x) for x in Path(sets["train_manifest"]).read_text().splitlines() if x.strip()]
    root = Path(sets["train_manifest"]).parent
    with open(path, "w") as f:
        for i in idx:
            r = dict(rows[i], image=str(root / rows[i]["image"]))
            f.write(json.dumps(r) + "\n")
    return str(path)


def lora_targets(base: str) -> list[str]:
    """Attention + MLP of every transformer block, plus the attention-pool projections of a ResNet image tower."""
    from clipforge.encode import Encoder

    names = [n for n, _ in Encoder.load(base).engine.model.named_modules()]
    return ["attn.qkv", "attn.out", "mlp.fc", "mlp.proj"] + (["attnpool.*"] if any(".attnpool." in n for n in names)
                                                              else [])


def train_adapted(base: str, manifest: str, out: Path, *, lora: bool, steps: int, seed: int, batch: int) -> str:
    """LoRA (rank 8 on attention + MLP of both towers) or full fine-tuning of `base` on `manifest`."""
    from clipforge.train.config import config_from_dict
    from clipforge.train.loop import train

    d = {"model": {"name": base}, "data": {"train": f"jsonl:{manifest}", "batch_size": batch, "workers": 0},
         "optim": {"lr": 2e-3 if lora else 2e-4, "weight_decay": 0.0 if lora else 0.1, "betas": [0.9, 0.98],
                   "grad_clip": 1.0},
         "schedule": {"name": "cosine", "warmup_steps": max(1, steps // 10)}, "loss": {"name": "clip"},
         "run": {"steps": steps, "seed": seed, "precision": "fp32", "log_every": 10, "eval_every": 0,
                 "checkpoint_every": 10 ** 6, "progress": False}}
    if lora:
        d["adapt"] = {"method": "lora", "rank": 8, "alpha": 16,
                      "targets": lora_targets(base), "towers": ["image", "text"]}
    train(config_from_dict(d).validate(), out)
    return str(out / "final")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="markdown report (also printed)")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--base", default=None, help="a trained source-domain model (default: train one here)")
    ap.add_argument("--base-steps", type=int, default=150)
    ap.add_argument("--shots", default="1,4,16")
    ap.add_argument("--methods", default=",".join(HEADS))
    ap.add_argument("--coop-epochs", type=int, default=50, help="CoOp epochs (the paper's 50-200 cost minutes here)")
    ap.add_argument("--train-shots", default="16", help="k for LoRA / full fine-tuning (each is a training run)")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--reverse", action="store_true", help="fonts-trained model adapted to handwritten digits")
    ap.add_argument("--rotate", type=float, default=None,
                    help="digits-trained model adapted to the handwritten digits rotated by this many degrees")
    add_common_args(ap, seeds=(0, 1), seeds_help="support-set draws (and LoRA / fine-tuning seeds)")
    a = ap.parse_args()

    import torch

    from clipforge.adapt import FEWSHOT, SupportSet, sample_support
    from clipforge.data import open_source
    from clipforge.data.demo_sets import build_digits, build_fonts
    from clipforge.encode import Encoder
    from clipforge.evaluate.fewshot_task import evaluate_fewshot, parse_int_list

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-adapt-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    digits, fonts = build_digits(str(work / "digits")), build_fonts(str(work / "fonts"))
    src, dst = (fonts, digits) if a.reverse else (digits, fonts)
    if a.rotate is not None:
        done = work / f"digits-rot{a.rotate:g}" / "train.jsonl"
        dst = (dict(digits, root=str(done.parent), train_manifest=str(done), val_dir=str(done.parent / "val"))
               if done.is_file() else rotated_set(digits, a.rotate, done.parent))
    names = Path(dst["classnames"]).read_text().split()
    templates = dst["templates_unseen"]
    descriptions = str(ROOT / "src/clipforge/data/digit_descriptions.json")

    t0 = time.perf_counter()
    base = a.base or train_base(src, work, a.base_steps, seed=0)
    base_s = time.perf_counter() - t0
    enc = Encoder.load(base)
    pool = enc.encode_source(open_source(f"jsonl:{dst['train_manifest']}"), 256, require="label")
    test = enc.encode_source(open_source(f"imagefolder:{dst['val_dir']}"), 256, require="label")
    shots, seeds = parse_int_list(a.shots, "shots"), a.seeds
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    t1 = time.perf_counter()
    parts = []
    for group in ([m for m in methods if m != "coop"], [m for m in methods if m == "coop"]):
        if not group:
            continue
        opts = {"templates": templates} if set(group) & {"zero-shot", "tip-adapter", "tip-adapter-f"} else {}
        if "gist" in group:
            opts["descriptions"] = descriptions
        if group == ["coop"]:
            opts.update(n_ctx=4, epochs=a.coop_epochs)
        parts += evaluate_fewshot(enc, pool, test, names, methods=group, shots=shots, seeds=seeds, progress=False,
                                  **opts)
    heads_s = time.perf_counter() - t1
    stats = {(p["method"], p["k_shot"]): summarize(p["metrics"]["top1_per_seed"], seeds) for p in parts}
    walls = {(p["method"], p["k_shot"]): p["metrics"]["fit_s"] for p in parts}

    # LoRA and full fine-tuning: a training run per (k, seed) on the same support images, then zero-shot.
    y = pool.label_tensor().numpy()
    for k in parse_int_list(a.train_shots, "train_shots") if a.train_shots else []:
        for name, lora in (("lora", True), ("full-ft", False)):
            accs, walls_k = [], []
            for seed in seeds:
                sup, _ = sample_support(y, k, seed, min(k, 4))
                man = subset_manifest(dst, sup, work / f"support-k{k}-s{seed}.jsonl")
                t = time.perf_counter()
                model = train_adapted(base, man, work / f"{name}-k{k}-s{seed}", lora=lora, steps=a.train_steps,
                                      seed=seed, batch=min(a.train_batch, len(sup)))  # k=1: 10 images
                walls_k.append(time.perf_counter() - t)
                e2 = Encoder.load(model)
                tf = e2.encode_source(open_source(f"imagefolder:{dst['val_dir']}"), 256, require="label")
                support = SupportSet.from_features(tf.feats[:1], tf.label_tensor()[:1], names)  # unused by zero-shot
                head = FEWSHOT.create("zero-shot", templates=templates).fit(e2, support)
                accs.append(float((head.scores(tf.feats).argmax(-1) == tf.label_tensor()).float().mean()))
            stats[(name, k)], walls[(name, k)] = summarize(accs, seeds), sum(walls_k) / len(walls_k)

    table = {key: (s["mean"], s["std"] or 0.0, walls[key]) for key, s in stats.items()}
    all_k = sorted({k for _, k in table})
    rows_m = methods + [m for m in ("lora", "full-ft") if any(mm == m for mm, _ in table)]
    head = "| method | " + " | ".join(f"{k}-shot" for k in all_k) + " | fit time per run (s), largest k |"
    lines = [head, "|---|" + "---:|" * (len(all_k) + 1)]
    for m in rows_m:
        cells = [f"{table[(m, k)][0]:.3f} ± {table[(m, k)][1]:.3f}" if (m, k) in table else "—" for k in all_k]
        last = max(k for mm, k in table if mm == m)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {table[(m, last)][2]:.1f} |")
    direction = ("fonts-trained → handwritten digits" if a.reverse else
                 f"digits-trained → handwritten digits rotated {a.rotate:g}°" if a.rotate is not None else
                 "digits-trained → printed digits (fonts)")
    text = (f"## Adaptation benchmark: {direction}\n\n"
            f"`python bench/bench_adapt.py {' '.join(sys.argv[1:])}` — torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average at start {load0[0]:.1f}, at end "
            f"{os.getloadavg()[0]:.1f}. Base: {'given' if a.base else f'{a.base_steps} steps of demo-digits'} "
            f"({base_s:.0f} s); test: {len(test.feats)} images, pool "
            f"{len(pool.feats)}; seeds {seeds} (mean ± sample std over seeds); few-shot heads took {heads_s:.0f} s in all. "
            + (f"LoRA / full fine-tuning: {a.train_steps} steps, batch {a.train_batch}, on the same k-shot support "
               f"images with their captions, then zero-shot with the unseen templates." if a.train_shots else "")
            + "\n\n" + "\n".join(lines) + "\n")
    for p in parts:
        print(json.dumps({"method": p["method"], "k": p["k_shot"], **{k: v for k, v in p["metrics"].items()}}))
    publish(text, a.out)
    write_results(a.out, {"bench": "adapt", "direction": direction, "seeds": seeds, "shots": shots,
                          "top1": {f"{m} k={k}": s for (m, k), s in stats.items()},
                          "fit_s": {f"{m} k={k}": w for (m, k), w in walls.items()}}, a.json)


if __name__ == "__main__":
    main()
