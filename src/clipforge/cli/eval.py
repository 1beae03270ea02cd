"""`clipforge eval`: benchmark models on any registered eval task -> results.jsonl."""
from __future__ import annotations

import json
import sys

from clipforge.cli._common import (add_engine_args, add_options, add_token_merge_args, engine_options, full_parser_for,
                                   option_values, positive_int)
from clipforge.errors import UsageError


def _tasks():
    from clipforge.evaluate import TASKS

    return TASKS, list(TASKS.all_options().values())


def register(sub):
    p = sub.add_parser(
        "eval", help="evaluate models (zero-shot classification/retrieval, ranked retrieval, linear probe, "
                     "few-shot k-shot protocol) -> results.jsonl",
        description="Run one task on each (model, dataset) and print its metrics; with --out, append one JSON "
                    "line per run (metrics, config hash, template-set hash, package versions, time) for "
                    "`clipforge report`. Datasets: any source (folder, imagefolder:, csv:/jsonl:/parquet:, "
                    "wds:), a CLIP_benchmark webdataset folder (classnames.txt, "
                    "zeroshot_classification_templates.txt, test/*.tar), or a Karpathy-split JSON "
                    "(dataset_flickr30k.json, dataset_coco.json) with --image-root. An index directory "
                    "(`clipforge index build`) is evaluated for zero-shot retrieval from its stored image and "
                    "caption embeddings (one caption per image), without re-embedding. Each task's own options "
                    "are flags below; one that does not apply to the chosen task is an error.")
    p.add_argument("--model", "-m", action="append",
                   help="model reference (registered name, checkpoint dir, hf:..., open_clip:...); repeatable. "
                        "Optional when every --dataset is an index directory (`clipforge index build`): "
                        "--task zeroshot-retrieval then scores its stored embeddings, and a --model given "
                        "must be the index's own")
    if full_parser_for("eval"):
        tasks, options = _tasks()
        p.add_argument("--task", required=True, choices=tasks.names(),
                       help="; ".join(f"{n}: {d}" for n, d in tasks.describe()))
        add_options(p, options)
    p.add_argument("--dataset", "-d", action="append", required=True, help="dataset spec; repeatable")
    p.add_argument("--split", help="split of a CLIP_benchmark folder or Karpathy JSON (default test)")
    p.add_argument("--image-root", help="Karpathy JSON or selection JSONL: folder holding the images (default: the "
                                        "file's folder)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits and k-shot sampling (default 0)")
    p.add_argument("--out", help="append result records (JSON lines) to this file")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0)")
    p.add_argument("--precision", default="fp32",
                   help="weights for inference: fp32 (default), bf16 (~2x faster on CPUs with native bf16), fp16, "
                        "or auto (picked per machine and model)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_engine_args(p)
    add_token_merge_args(p)
    p.add_argument("--json", action="store_true", help="print the full records as JSON lines")
    p.set_defaults(func=run)


def _summary(rec: dict) -> str:
    keys = [k for k in rec["metrics"] if isinstance(rec["metrics"][k], float)]
    vals = ", ".join(f"{k}={rec['metrics'][k]:.4f}" for k in keys[:8])
    cfg = rec.get("config") or {}
    if rec["task"] == "few-shot":
        vals = f"{cfg.get('method')} k={cfg.get('k_shot')}: " + vals
    sk = rec.get("skipped") or {}
    totals = [sk.get("total", 0)] if "total" in sk else [v.get("total", 0) for v in sk.values()]
    tail = f"  (skipped {sum(totals)} images)" if sum(totals) else ""
    return f"{rec['model']} | {rec['dataset']} | {rec['task']}: {vals}{tail}"


def run(args) -> int:
    from clipforge.encode import Encoder, pick_device
    from clipforge.evaluate import run_eval
    from clipforge.evaluate.index_retrieval import is_index_dir
    from clipforge.models import load_model

    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    device = pick_device(args.device)
    options = option_values(args, _tasks()[1])
    refs = args.model or [None]
    n_records = 0
    for ref in refs:
        encoder = None  # loaded on first use: an index dataset is scored from its stored embeddings
        for ds in args.dataset:
            if ref is not None and encoder is None and not is_index_dir(ds):
                encoder = Encoder.from_model(load_model(ref), device=device, precision=args.precision,
                                             **engine_options(args))
            rec = run_eval(encoder, args.task, ds, model_name=ref, split=args.split, image_root=args.image_root,
                           seed=args.seed, batch_size=args.batch_size, workers=args.workers,
                           precision=args.precision, out=args.out, **options)
            for r in rec.get("records", [rec]):  # few-shot: one record per method and k
                print(json.dumps(r) if args.json else _summary(r))
                n_records += 1
    if args.out:
        print(f"appended {n_records} record(s) to {args.out}", file=sys.stderr)
    return 0
