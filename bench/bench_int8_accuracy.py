"""What int8 costs: zero-shot top-1 on the digits demo and text->image recall on the photos demo, per engine.

    python bench/bench_int8_accuracy.py [--digits-model DIR | --digits-steps N] [--photos-model DIR] [--out docs/bench_int8.md]

Trains (unless given checkpoints) the packaged `demo-digits` config and the tour's photo-caption model, then
evaluates the same weights with every installed engine: torch fp32 (the reference), onnx and openvino in fp32
and with dynamic int8 quantisation (Linear layers' weights int8 per channel, activations quantised per batch).
Digits: zero-shot top-1 on the 360 held-out digits with prompt templates never seen in training. Photos:
text->image recall@1/@5 of every caption against the demo's photos (what `index build` + `search` rank).
Also reported: the largest cosine distance of each engine's image embeddings from torch's.
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
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, machine, machine_line, publish, summarize, write_results  # noqa: E402

ENGINES = [("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8")]


def train_digits(work: Path, digits: dict, steps=None, seed: int = 0) -> str:
    from clipforge.train import load_config, train

    cfg = load_config("demo-digits", [f"data.train=jsonl:{digits['train_manifest']}",
                                      f"data.val=imagefolder:{digits['val_dir']}",
                                      f"data.val_classnames={digits['classnames']}",
                                      f"data.val_templates={digits['templates_unseen']}",
                                      "run.eval_every=0", "run.progress=false", f"run.seed={seed}"]
                      + ([f"run.steps={steps}", f"run.checkpoint_every={steps}"] if steps else []))
    train(cfg, work / f"digits-run-{seed}")
    return str(work / f"digits-run-{seed}" / "final")


def train_photos(work: Path, photos: dict, seed: int = 0) -> str:
    from clipforge.train import train
    from clipforge.train.config import config_from_dict

    cfg = config_from_dict({  # the tour's photo-caption model (clipforge/tour.py)
        "model": {"name": "tiny", "tokenizer": "train", "tokenizer_vocab_size": 768,
                  "overrides": {"preprocess": {"per_image_norm": True}}},
        "data": {"train": f"jsonl:{photos['manifest']}", "batch_size": 22},
        "optim": {"lr": 3e-3, "weight_decay": 0.05},
        "schedule": {"warmup_steps": 10},
        "run": {"steps": 200, "seed": seed, "log_every": 50, "checkpoint_every": 1000, "keep_checkpoints": 1, "progress": False},
    }).validate()
    train(cfg, work / f"photos-run-{seed}")
    return str(work / f"photos-run-{seed}" / "final")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits-model", default=None, help="a trained digits checkpoint (default: train one)")
    ap.add_argument("--photos-model", default=None, help="a trained photos checkpoint (default: train one)")
    ap.add_argument("--digits-steps", type=int, default=None, help="train the digits model this long (default: "
                    "the demo config's steps)")
    ap.add_argument("--out", default=None)
    add_common_args(ap, seeds=(0,), seeds_help="training seeds of the models it trains (one pair of models per "
                                               "seed; given models are measured once)")
    a = ap.parse_args(argv)

    from clipforge.data.demo_sets import build_digits, build_photos
    from clipforge.encode.auto import available_engines
    from clipforge.models import load_model

    installed = available_engines(None)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)
        digits = build_digits(str(work / "digits"))
        photos = build_photos(str(work / "photos"))
        seeds = [a.seeds[0]] if a.digits_model and a.photos_model else a.seeds
        for seed in seeds:
            dm = load_model(a.digits_model or train_digits(work, digits, a.digits_steps, seed)).eval()
            pm = load_model(a.photos_model or train_photos(work, photos, seed)).eval()
            rows += measure(dm, pm, digits, photos, installed, str(work / f"cache-{seed}"), seed)
    by_seed = {r["seed"]: [x for x in rows if x["seed"] == r["seed"]] for r in rows}
    deltas = {}
    for r in rows:  # the change from torch fp32 on the same weights, per seed
        b = by_seed[r["seed"]][0]
        for k in ("digits_top1", "t2i_R@1"):
            deltas.setdefault(f"{r['engine']} {r['precision']} {k}", []).append((r[k] - b[k], r["seed"]))
    summary = {k: summarize([d for d, _ in v], [s for _, s in v]) for k, v in deltas.items()}
    first = by_seed[seeds[0]]
    base = first[0]
    lines = ["| engine | precision | digits zero-shot top-1 | photos text→image R@1 | R@5 | max cosine distance vs torch |",
             "|---|---|---:|---:|---:|---:|"]
    for r in first:
        lines.append(f"| {r['engine']} | {r['precision']} | {r['digits_top1']:.4f} ({r['digits_top1'] - base['digits_top1']:+.4f}) "
                     f"| {r['t2i_R@1']:.4f} ({r['t2i_R@1'] - base['t2i_R@1']:+.4f}) | {r['t2i_R@5']:.4f} | {r['max_cos_dist']:.1e} |")
    head = (f"`python bench/bench_int8_accuracy.py --seeds {','.join(map(str, seeds))}` — {machine_line()}; "
            f"{time.perf_counter() - t0:.0f} s in all. Digits model: "
            f"{a.digits_model or ('demo-digits, ' + str(a.digits_steps or 'its') + ' steps')}; 360 "
            f"held-out images, 10 classes, unseen templates. Photos: {base['n_texts']} captions against the "
            f"demo photos. Table: seed {seeds[0]}; in parentheses the change from torch fp32 on the same weights "
            "(every seed's rows and the mean ± sample std of each change over the seeds: the JSON beside this page).")
    text = "\n".join(["# int8 accuracy cost", "", head, "", *lines, ""])
    publish(text, a.out)
    write_results(a.out, {"bench": "int8_accuracy", "seeds": seeds, "rows": rows, "change_vs_torch_fp32": summary,
                          "machine": machine()}, a.json)
    return 0


def measure(dm, pm, digits: dict, photos: dict, installed: list, cache: str, seed: int) -> list[dict]:
    import torch

    from clipforge.data.sources import open_source
    from clipforge.encode import Encoder
    from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
    from clipforge.evaluate.zeroshot_retrieval import evaluate_zeroshot_retrieval

    rows = []
    val = open_source(f"imagefolder:{digits['val_dir']}")
    names = Path(digits["classnames"]).read_text().split("\n")
    names = [n for n in names if n.strip()]
    templates = [t for t in Path(digits["templates_unseen"]).read_text().split("\n") if t.strip()]
    ref_d = ref_p = None
    for name, prec in ENGINES:
        if name not in installed:
            continue
        opts = {} if name == "torch" else {"cache_dir": cache}
        ed = Encoder.from_model(dm, engine=name, precision=prec, **opts)
        ep = Encoder.from_model(pm, engine=name, precision=prec, **opts)
        zs = evaluate_zeroshot_classification(ed, val, classnames=names, templates=templates, progress=False)
        fd = ed.encode_source(val, progress=False).feats
        fp = ep.encode_source(open_source(f"jsonl:{photos['manifest']}"), progress=False)
        rt = evaluate_zeroshot_retrieval(ep, open_source(f"jsonl:{photos['manifest']}"), ks=(1, 5),
                                         features=fp, progress=False)
        ref_d = fd if ref_d is None else ref_d
        ref_p = fp.feats if ref_p is None else ref_p
        dist = max((1 - torch.nn.functional.cosine_similarity(fd, ref_d)).max().item(),
                   (1 - torch.nn.functional.cosine_similarity(fp.feats, ref_p)).max().item())
        m = rt["metrics"]
        rows.append({"seed": seed, "engine": name, "precision": prec, "digits_top1": zs["metrics"]["top1"],
                     "t2i_R@1": m["t2i_R@1"], "t2i_R@5": m["t2i_R@5"], "n_texts": m["t2i_n"],
                     "max_cos_dist": dist})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
