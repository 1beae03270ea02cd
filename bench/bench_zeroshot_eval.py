"""Zero-shot classification eval wall time: clipforge vs CLIP_benchmark on the same model, images and templates.

One process runs both, alternating, on identical inputs: the same randomly initialised ViT-B-32 (clipforge's,
exported to open_clip with `export_model(..., "open_clip")` so both hold the same weights), the digits demo
validation images (360 images of 32 px, each tool resizing to 224 with its own preprocessing), 10 class names
x OpenAI's 80 templates, the same batch size, data-loading workers and torch threads, float32 everywhere.

    clipforge      evaluate_zeroshot_classification(model, source, classnames, templates, batch_size)
    CLIP_benchmark clip_benchmark.metrics.zeroshot_classification.evaluate(model, DataLoader(ImageFolder),
                   tokenizer, classnames, templates, "cpu", amp=False)

Optional reduced precision (`--bf16`): clipforge with its weights cast to bfloat16 vs CLIP_benchmark's own
mixed-precision mode (amp=True = torch.autocast bfloat16 on CPU): each tool's fastest low-precision path.

Needs open_clip + torchvision (+ clip-benchmark, scikit-learn), i.e. the reference environment:
    PYTHONPATH=/work/cbpkgs /work/ocenv/bin/python bench/bench_zeroshot_eval.py --out docs/bench_zeroshot_eval.md
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

from common import add_common_args, fmt, machine_line, publish, summarize, write_results  # noqa: E402


def run_clipforge(model, val_dir, names, templates, batch_size, workers):
    from clipforge.data.sources import open_source
    from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification

    t0 = time.perf_counter()
    res = evaluate_zeroshot_classification(model, open_source(f"imagefolder:{val_dir}"), classnames=names,
                                           templates=templates, batch_size=batch_size, workers=workers,
                                           progress=False)
    return time.perf_counter() - t0, res["metrics"]["top1"], res["metrics"]["n"]


def _accuracy(output, target, topk=(1,)):
    """clip_benchmark 1.6.2's `accuracy`, with `.item()` where it calls float() on a 1-element array."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def run_clip_benchmark(model, preprocess, tokenizer, val_dir, names, templates, batch_size, workers, amp):
    import torch
    import torchvision
    from clip_benchmark.metrics import zeroshot_classification as zsc

    zsc.accuracy = _accuracy  # 1.6.2's float(1-element array) fails on numpy >= 2.4 (after all the compute)
    t0 = time.perf_counter()
    ds = torchvision.datasets.ImageFolder(val_dir, transform=preprocess)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    # CLIP_benchmark's templates use "{c}"; ours store "{c}" too, so the same strings reach both tools.
    m = zsc.evaluate(model, dl, tokenizer, names, templates, "cpu", amp=amp, verbose=False)
    return time.perf_counter() - t0, m["acc1"], len(ds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    ap.add_argument("--templates", default="openai_imagenet")
    ap.add_argument("--bf16", action="store_true", help="also time the reduced-precision paths")
    ap.add_argument("--out", help="write the markdown table here")
    add_common_args(ap, seeds=(0,), seeds_help="one timed round per seed, the tools alternating (the first seed "
                                               "draws the weights)")
    a = ap.parse_args()

    import open_clip
    import torch

    from clipforge.data.demo_sets import DIGIT_NAMES, build_digits
    from clipforge.models import create_model
    from clipforge.models.convert.export import export_model
    from clipforge.zeroshot.templates import get_templates

    if a.threads:
        torch.set_num_threads(a.threads)
    templates = get_templates(a.templates)
    names = list(DIGIT_NAMES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        val_dir = build_digits(os.path.join(tmp, "digits"))["val_dir"]
        torch.manual_seed(a.seeds[0])
        cf = create_model(a.arch).eval()
        export_model(cf, "open_clip", os.path.join(tmp, "oc"))
        oc, _, oc_pre = open_clip.create_model_and_transforms(f"local-dir:{os.path.join(tmp, 'oc')}")
        oc.eval()
        oc_tok = open_clip.get_tokenizer(f"local-dir:{os.path.join(tmp, 'oc')}")
        common = (val_dir, names, templates, a.batch_size, a.workers)

        def timed(label, fn, *args):
            wall, acc, n = fn(*args)
            print(json.dumps({"run": label, "wall_s": round(wall, 2), "top1": acc, "n": n}), flush=True)
            return wall, acc, n

        pairs = [("fp32", lambda: timed("clipforge fp32", run_clipforge, cf, *common),
                  lambda: timed("CLIP_benchmark fp32", run_clip_benchmark, oc, oc_pre, oc_tok, *common, False))]
        if a.bf16:
            cf16 = create_model(a.arch)
            cf16.load_state_dict(cf.state_dict())
            cf16 = cf16.to(torch.bfloat16).eval()
            pairs.append(("bf16", lambda: timed("clipforge bf16 weights", run_clipforge, cf16, *common),
                          lambda: timed("CLIP_benchmark amp (bf16 autocast)", run_clip_benchmark, oc, oc_pre,
                                        oc_tok, *common, True)))
        for prec, ours, theirs in pairs:
            runs = []
            for i, _seed in enumerate(a.seeds):  # alternate the order so that a load change hits both alike
                (t_cf, acc_cf, n_cf), (t_cb, acc_cb, n_cb) = ((ours(), theirs()) if i % 2 == 0
                                                              else reversed((theirs(), ours())))
                runs.append((t_cf, t_cb))
            cf_s, cb_s = (summarize([r[j] for r in runs], a.seeds) for j in (0, 1))
            rows.append({"precision": prec, "clipforge_s": cf_s, "clip_benchmark_s": cb_s,
                         "ratio": summarize([cb / c for c, cb in runs], a.seeds),
                         "top1_cf": acc_cf, "top1_cb": acc_cb, "n": n_cf, "n_cb": n_cb})

    head = (f"`bench/bench_zeroshot_eval.py` — {a.arch} (random init, same weights in both via open_clip export), "
            f"digits val ({rows[0]['n']} images, 32 px upscaled to 224), {len(names)} classes x {len(templates)} "
            f"templates ({a.templates}), batch {a.batch_size}, workers {a.workers}, open_clip "
            f"{open_clip.__version__}, {machine_line()}; seconds are mean ± sample std over {len(a.seeds)} alternating "
            f"rounds (seeds {','.join(map(str, a.seeds))}).")
    lines = ["| precision | clipforge eval (s) | CLIP_benchmark (s) | speed-up | top-1 clipforge / CLIP_benchmark |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['precision']} | {fmt(r['clipforge_s'], 1, False)} | {fmt(r['clip_benchmark_s'], 1, False)} | "
              f"{fmt(r['ratio'], 2, False)}x | "
              f"{r['top1_cf']:.4f} / {r['top1_cb']:.4f} |" for r in rows]
    text = "\n".join(["# Zero-shot classification eval: wall time", "", head, "", *lines, ""])
    publish(text, a.out)
    write_results(a.out, {"bench": "zeroshot_eval", "seeds": a.seeds, "arch": a.arch, "rows": rows}, a.json)


if __name__ == "__main__":
    main()
