"""`clipforge eval`: benchmark models on zero-shot classification, zero-shot retrieval or a linear probe."""
from __future__ import annotations

import json
import sys

from clipforge.cli._common import pick_device, positive_int


def register(sub):
    from clipforge.evaluate.runner import TASKS

    p = sub.add_parser(
        "eval", help="evaluate models (zero-shot classification/retrieval, linear probe) -> results.jsonl",
        description="Run one task on each (model, dataset) and print its metrics; with --out, append one JSON "
                    "line per run (metrics, config hash, template-set hash, package versions, time) for "
                    "`clipforge report`. Datasets: any source (folder, imagefolder:, csv:/jsonl:/parquet:, "
                    "wds:), a CLIP_benchmark webdataset folder (classnames.txt, "
                    "zeroshot_classification_templates.txt, test/*.tar), or a Karpathy-split JSON "
                    "(dataset_flickr30k.json, dataset_coco.json) with --image-root. An index directory "
                    "(`clipforge index build`) is evaluated for zero-shot retrieval from its stored image and "
                    "caption embeddings (one caption per image), without re-embedding.")
    p.add_argument("--model", "-m", action="append",
                   help="model reference (registered name, checkpoint dir, hf:..., open_clip:...); repeatable. "
                        "Optional when every --dataset is an index directory (`clipforge index build`): "
                        "--task zeroshot-retrieval then scores its stored embeddings, and a --model given "
                        "must be the index's own")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--dataset", "-d", action="append", required=True, help="dataset spec; repeatable")
    p.add_argument("--split", help="split of a CLIP_benchmark folder or Karpathy JSON (default test)")
    p.add_argument("--image-root", help="Karpathy JSON: folder holding the images (default: the JSON's folder)")
    p.add_argument("--templates", help="zero-shot: template set name or file (default: the dataset's own "
                   "templates file when present, else openai_imagenet)")
    p.add_argument("--classnames", help="zero-shot: class names file (default: the dataset's)")
    p.add_argument("--method", choices=("mean", "cupl"), help="zero-shot head (default mean)")
    p.add_argument("--descriptions", help="zero-shot --method cupl: JSON {class: [sentences]}")
    p.add_argument("--test-dataset", help="linear probe: the test set (the --dataset is the training set)")
    p.add_argument("--test-fraction", type=float, help="linear probe: hold out this fraction of --dataset")
    p.add_argument("--k-shot", type=positive_int, help="linear probe: train on K images per class")
    p.add_argument("--seed", type=int, default=0, help="seed for splits and k-shot sampling (default 0)")
    p.add_argument("--out", help="append result records (JSON lines) to this file")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="cast the weights for inference (default fp32; bf16 is ~2x faster on CPUs with bf16 units)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the full records as JSON lines")
    p.set_defaults(func=run)


def _summary(rec: dict) -> str:
    keys = [k for k in rec["metrics"] if isinstance(rec["metrics"][k], float)]
    vals = ", ".join(f"{k}={rec['metrics'][k]:.4f}" for k in keys[:8])
    sk = rec.get("skipped") or {}
    totals = [sk.get("total", 0)] if "total" in sk else [v.get("total", 0) for v in sk.values()]
    tail = f"  (skipped {sum(totals)} images)" if sum(totals) else ""
    return f"{rec['model']} | {rec['dataset']} | {rec['task']}: {vals}{tail}"


def run(args) -> int:
    from clipforge.evaluate.index_retrieval import is_index_dir
    from clipforge.evaluate.runner import run_eval
    from clipforge.models import load_model

    from clipforge.errors import UsageError

    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    device = pick_device(args.device)
    refs = args.model or [None]
    for ref in refs:
        model = None  # loaded on first use: an index dataset is scored from its stored embeddings
        for ds in args.dataset:
            if ref is not None and model is None and not is_index_dir(ds):
                model = load_model(ref).to(device).eval()
            rec = run_eval(model, args.task, ds, model_name=ref, templates=args.templates,
                           classnames=args.classnames, method=args.method, descriptions=args.descriptions,
                           k_shot=args.k_shot, test_dataset=args.test_dataset, test_fraction=args.test_fraction,
                           split=args.split, image_root=args.image_root, seed=args.seed,
                           batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                           out=args.out)
            print(json.dumps(rec) if args.json else _summary(rec))
    if args.out:
        print(f"appended {len(refs) * len(args.dataset)} record(s) to {args.out}", file=sys.stderr)
    return 0
