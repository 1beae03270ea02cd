"""Objectives at equal steps on the offline synthetic sets (docs/objectives.md, docs/benchmarks.md).

    python bench/bench_objectives.py counting  [--steps 200] [--seeds 0 1 2 3 4] [--count-fraction 0.25] [--json out.json]
    python bench/bench_objectives.py distill   [--teacher-steps 400] [--steps 100] [--seeds 0 1 2] [--arms ...]
    python bench/bench_objectives.py longclip  [--base-steps 300] [--steps 150] [--seeds 0 1 2]
    python bench/bench_objectives.py sweep     [--steps 100] [--losses clip filip clip+multipos cwcl]

counting  Trains the tiny model on `clipforge data demo counting` with `clip` and with `clip+count` (same
          seeds, steps, batch, schedule) and scores counting accuracy: each held-out image against the six
          captions "a picture showing {1..6} {its colour} {its shape}s." (an unseen phrasing).
          --count-fraction F < 1 gives the rest of the training images count-free captions (the paper's
          setting: counts are rare in web captions, so in-batch negatives seldom differ by number alone).
distill   Trains a teacher on the digits demo, reinforces the training set with it (stored views and
          embeddings), then trains the same student with `clip` and with `clip+distill` on the reinforced
          set at equal steps (and `cwcl` weighted by the teacher's image-image similarities: `cwcl-teacher`);
          zero-shot top-1 on held-out digits with unseen templates.
longclip  Trains a base model (context 32) on the long-caption set, then continues it for equal steps
          either as is (captions truncated at 32 tokens) or stretched to 68 positions with the Long-CLIP
          loss (full captions); text->image and image->text R@1 on held-out pairs with the full captions.
sweep     Trains the digits demo with each objective that needs no extra data at equal steps and seeds;
          zero-shot top-1 on held-out digits with unseen templates.

Every bench trains the digits demo's tiny-resnet recipe (`--recipe vit`: the previous tiny ViT). Each arm runs
every seed (default 0-4); the JSON gives each seed's value, the mean, the sample standard deviation (ddof=1),
n and the seeds (bench/common.py), and for two-arm benches the paired difference per seed. Wall times depend on the machine's load (printed with `uptime`'s load average).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import add_common_args, machine, summarize, write_results  # noqa: E402
from clipforge.data import open_source  # noqa: E402
from clipforge.encode import Encoder  # noqa: E402
from clipforge.models import load_model  # noqa: E402
from clipforge.train import load_config, train  # noqa: E402

BASE = [  # the digits demo's recipe (tiny-resnet, trained BPE), smaller batch: src/clipforge/configs/demo-digits.yaml
    "model.name=tiny-resnet", "model.tokenizer=train", "model.tokenizer_vocab_size=1024",
    "data.batch_size=64", "optim.lr=0.002", "optim.weight_decay=0.1", "optim.grad_clip=1.0",
    "schedule.warmup_steps=20", "run.log_every=25", "run.checkpoint_every=100000", "run.progress=false",
    "run.threads=2",
]
VIT_BASE = [  # the previous demo recipe (tiny ViT, conv stem, per-image normalisation): `--recipe vit`
    "model.name=tiny", "model.tokenizer=train", "model.tokenizer_vocab_size=1024",
    "model.overrides={vision: {stem: conv}, preprocess: {per_image_norm: true}}",
    "data.batch_size=64", "optim.lr=0.002", "optim.weight_decay=0.1", "schedule.warmup_steps=20",
    "run.log_every=25", "run.checkpoint_every=100000", "run.progress=false", "run.threads=2",
]
STUDENT = {  # the distillation student: the same family as the teacher, about half as big
    "resnet": ["model.overrides={vision: {width: 8}, text: {layers: 1}}"],
    "vit": ["model.overrides={vision: {stem: conv, layers: 1}, text: {layers: 1}, preprocess: {per_image_norm: true}}"],
}


def load() -> float:
    return os.getloadavg()[0]


FINE_TUNE = [s for s in BASE if not s.startswith(("model.tokenizer", "model.overrides", "model.name"))]


def run(sets: list[str], out: Path, base: list[str] = BASE) -> dict:
    """Train one arm/seed; a finished run of the very same settings in `out` (same --work) is reused."""
    done = out / "bench_run.json"
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("sets") == base + sets:
            print(f"reusing {out} (same settings, finished earlier)", flush=True)
            return prev["result"]
    t0 = time.perf_counter()
    summary = train(load_config(None, base + sets), out)
    result = {"wall_s": round(time.perf_counter() - t0, 1), "train_s": summary["train_time_s"],
              "final_loss": summary["final"].get("loss")}
    done.write_text(json.dumps({"sets": base + sets, "result": result}))
    return result


# ---------------------------------------------------------------------------------------------- counting
def counting_accuracy(model_dir: Path, val_manifest: str) -> float:
    from clipforge.data.demo_counting import COLORS, EVAL_TEMPLATE, SHAPES, count_caption

    enc = Encoder.from_model(load_model(str(model_dir)))
    feats = enc.encode_source(open_source(f"jsonl:{val_manifest}"), progress=False)
    keys = [(c, s) for c in COLORS for s in SHAPES]                 # every candidate caption, encoded once
    texts = [count_caption(EVAL_TEMPLATE, k, c, s) for c, s in keys for k in range(1, 7)]
    cands = enc.encode_texts(texts).view(len(keys), 6, -1)           # (colour x shape, count, D)
    where = {key: i for i, key in enumerate(keys)}
    correct = 0
    for f, meta in zip(feats.feats, feats.meta):
        pred = int((cands[where[(meta["color"], meta["shape"])]] @ f).argmax()) + 1
        correct += pred == int(meta["count"])
    return correct / len(feats)


def bench_counting(args, work: Path) -> dict:
    from clipforge.data.demo_counting import COUNT_WORDS, build_counting

    data = build_counting(str(work / f"counting-{args.count_fraction:g}"), count_fraction=args.count_fraction)
    out = {"steps": args.steps, "seeds": args.seeds, "count_fraction": args.count_fraction, "arms": {}}
    for loss in ("clip", "clip+count"):
        accs, runs = [], []
        for seed in args.seeds:
            d = work / f"count-{args.count_fraction:g}-{loss}-{seed}"
            # counterfactual numbers from the set's own range (1..6): "seven".."ten" would be a text-only shortcut
            opts = [f"loss.options={{max_count: {len(COUNT_WORDS)}}}"] if loss == "clip+count" else []
            r = run([f"data.train=jsonl:{data['train_manifest']}", f"loss.name={loss}", f"run.steps={args.steps}",
                     f"run.seed={seed}"] + opts, d)
            r["accuracy"] = counting_accuracy(d / "final", data["val_manifest"])
            r["load"] = round(load(), 1)
            runs.append(r)
            accs.append(r["accuracy"])
            print(f"counting {loss} seed {seed}: accuracy {r['accuracy']:.4f} ({r['wall_s']} s, load {r['load']})",
                  flush=True)
        out["arms"][loss] = {"accuracy": summarize(accs, args.seeds), "runs": runs}
    a, b = (out["arms"][k]["accuracy"]["values"] for k in ("clip", "clip+count"))
    out["clip+count - clip"] = summarize([y - x for x, y in zip(a, b)], args.seeds)  # paired by seed
    return out


# ------------------------------------------------------------------------------------------------ distill
def zeroshot_top1(model_dir: Path, digits: dict) -> float:
    from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification

    res = evaluate_zeroshot_classification(load_model(str(model_dir)), open_source(digits["val_dir"]),
                                           classnames=digits["classnames"], templates=digits["templates_unseen"],
                                           progress=False)
    return res["metrics"]["top1"]


def bench_distill(args, work: Path) -> dict:
    from clipforge.data.demo_sets import build_digits
    from clipforge.train.reinforce import reinforce

    digits = build_digits(str(work / "digits"))
    train_spec = f"jsonl:{digits['train_manifest']}"
    teacher = work / "teacher"
    t = run([f"data.train={train_spec}", f"run.steps={args.teacher_steps}", "run.seed=100"],
            teacher)
    t["top1"] = zeroshot_top1(teacher / "final", digits)
    print(f"teacher: top-1 {t['top1']:.4f} ({t['wall_s']} s)", flush=True)
    t0 = time.perf_counter()
    store = work / "reinforced"
    summary = reinforce(open_source(train_spec), [str(teacher / "final")], store,
                        augmentations=args.augmentations, seed=0, progress=False)
    t["reinforce_s"] = round(time.perf_counter() - t0, 1)
    out = {"steps": args.steps, "seeds": args.seeds, "teacher": t, "reinforce": summary, "arms": {}}
    student = STUDENT[args.recipe]
    reinforced = [f"data.reinforcement={store}"]
    arms = {"clip": ("clip", []), "clip+distill": ("clip+distill", reinforced),  # label: (loss, extra settings)
            # CWCL with the teacher's image-image similarities as the continuous weights, both towers training
            "cwcl-teacher": ("cwcl", reinforced + ["loss.options={weights: teacher}"])}
    for label in args.arms:
        loss, extra = arms[label]
        out["arms"][label] = digits_arm("distill", label, loss, args, digits, work / "student", student + extra)
    return out


def digits_arm(bench: str, label: str, loss: str, args, digits: dict, prefix: Path, extra: list[str]) -> dict:
    """One arm on the digits demo: `loss` for every seed, zero-shot top-1 on held-out digits with unseen
    templates; returns {"top1": stats, "runs": [...]}."""
    accs, runs = [], []
    for seed in args.seeds:
        d = prefix.with_name(f"{prefix.name}-{label}-{seed}")
        r = run(extra + [f"data.train=jsonl:{digits['train_manifest']}", f"loss.name={loss}",
                         f"run.steps={args.steps}", f"run.seed={seed}"], d)
        r["top1"] = zeroshot_top1(d / "final", digits)
        r["load"] = round(load(), 1)
        runs.append(r)
        accs.append(r["top1"])
        print(f"{bench} {label} seed {seed}: top-1 {r['top1']:.4f} ({r['wall_s']} s, load {r['load']})", flush=True)
    return {"top1": summarize(accs, args.seeds), "runs": runs}


# -------------------------------------------------------------------------------------------------- sweep
SWEEP_LOSSES = ("clip", "filip", "clip+multipos", "cwcl")


def bench_sweep(args, work: Path) -> dict:
    """Every objective that needs no extra data, trained on the digits demo at equal steps and seeds; zero-shot
    top-1 on held-out digits with unseen templates (the demo captions give six captions per image, which
    `clip+multipos` uses as positives)."""
    from clipforge.data.demo_sets import build_digits

    digits = build_digits(str(work / "digits"))
    out = {"steps": args.steps, "seeds": args.seeds, "arms": {}}
    for loss in args.losses:
        out["arms"][loss] = digits_arm("sweep", loss, loss, args, digits, work / "sweep", [])
    return out


# ----------------------------------------------------------------------------------------------- longclip
def retrieval_r1(model_dir: Path, manifest: str, short: bool = False) -> dict:
    """R@1 both ways over the held-out pairs (one caption per image): full captions, or first sentences."""
    from clipforge.data.captions import first_sentence

    enc = Encoder.from_model(load_model(str(model_dir)))
    feats = enc.encode_source(open_source(f"jsonl:{manifest}"), progress=False)
    caps = [c[0] for c in feats.captions]
    if short:
        caps = [first_sentence(c) for c in caps]
    txt = enc.encode_texts(caps)
    sim = txt @ feats.feats.t()                                   # (texts, images), row i's image is i
    target = torch.arange(len(caps))
    return {"text_to_image_r1": float((sim.argmax(1) == target).float().mean()),
            "image_to_text_r1": float((sim.argmax(0) == target).float().mean())}


def bench_longclip(args, work: Path) -> dict:
    from clipforge.data.demo_long_captions import build_long_captions
    from clipforge.models.stretch import stretch_model

    data = build_long_captions(str(work / "long"))
    spec = f"jsonl:{data['train_manifest']}"
    base = work / "base"
    b = run([f"data.train={spec}", f"run.steps={args.base_steps}", "run.seed=100"], base)
    b.update(retrieval_r1(base / "final", data["test_manifest"]))
    print(f"base: {b}", flush=True)
    stretched = work / "base-stretched"
    stretch_model(load_model(str(base / "final")), context_length=68).save_pretrained(stretched)
    out = {"steps": args.steps, "seeds": args.seeds, "base": b, "arms": {}}
    arms = {"truncate (clip, 32 tokens)": [f"model.name={base / 'final'}", "loss.name=clip"],
            "stretch 68 + longclip": [f"model.name={stretched}", "loss.name=longclip"]}
    for arm, sets in arms.items():
        rows = []
        for seed in args.seeds:
            d = work / f"long-{arm.split()[0]}-{seed}"
            r = run(sets + [f"data.train={spec}", f"run.steps={args.steps}", f"run.seed={seed}",
                            "optim.lr=0.0005", "schedule.warmup_steps=10"], d, base=FINE_TUNE)
            r.update({"full": retrieval_r1(d / "final", data["test_manifest"]),
                      "first_sentence": retrieval_r1(d / "final", data["test_manifest"], short=True)})
            r["load"] = round(load(), 1)
            rows.append(r)
            print(f"longclip {arm} seed {seed}: {r['full']} short {r['first_sentence']}", flush=True)
        out["arms"][arm] = {"text_to_image_r1": summarize([r["full"]["text_to_image_r1"] for r in rows], args.seeds),
                            "image_to_text_r1": summarize([r["full"]["image_to_text_r1"] for r in rows], args.seeds),
                            "runs": rows}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["counting", "distill", "longclip", "sweep"])
    ap.add_argument("--losses", nargs="+", default=list(SWEEP_LOSSES), help="sweep: the losses to compare")
    ap.add_argument("--arms", nargs="+", default=["clip", "clip+distill", "cwcl-teacher"],
                    choices=["clip", "clip+distill", "cwcl-teacher"], help="distill: the student arms")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--augmentations", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64, help="global batch of every run (default 64)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--recipe", choices=["resnet", "vit"], default="resnet",
                    help="resnet: the digits demo's tiny-resnet (default); vit: the previous tiny ViT with a conv stem")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--count-fraction", type=float, default=1.0,
                    help="counting: share of training images whose captions state the count (the rest name colour "
                         "and shape only, like most web captions)")
    add_common_args(ap, seeds=(0, 1, 2, 3, 4), seeds_help="training seeds of every arm")
    args = ap.parse_args()
    args.steps = args.steps or {"counting": 200, "distill": 100, "longclip": 150, "sweep": 100}[args.which]
    logging.basicConfig(level=logging.WARNING)
    if args.recipe == "vit":
        BASE[:] = VIT_BASE
    BASE[:] = [f"data.batch_size={args.batch}" if s.startswith("data.batch_size") else
               f"run.threads={args.threads}" if s.startswith("run.threads") else s for s in BASE]
    FINE_TUNE[:] = [s for s in BASE if not s.startswith(("model.tokenizer", "model.overrides", "model.name"))]
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix=f"bench-{args.which}-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {"counting": bench_counting, "distill": bench_distill, "longclip": bench_longclip,
           "sweep": bench_sweep}[args.which](args, work)
    res.update({"bench": args.which, "recipe": args.recipe, "wall_s": round(time.perf_counter() - t0, 1), "load_end": round(load(), 1),
                "machine": machine()})
    print(json.dumps(res, indent=1))
    write_results(None, res, args.json)


if __name__ == "__main__":
    main()
