"""`clipforge classify`: zero-shot top-k labels for image files or a whole source."""
from __future__ import annotations

import json
import sys

from clipforge.cli._common import add_model_args, load_model_from_args, positive_int


def register(sub):
    from clipforge.zeroshot.classify import METHODS

    p = sub.add_parser(
        "classify", help="label images zero-shot from class names (no training)",
        description="Print the top-k class names with scores for each image, or write them for a whole source "
                    "(folder, manifest, shards) to CSV/JSONL. Scores are probabilities over the classes for "
                    "mean/zpe/cupl, the mean prompt probability for describe, and the rescored similarity for "
                    "disclip. Unreadable images are skipped and counted.")
    add_model_args(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_SOURCE",
                   help="image files, or one source: folder, csv:/jsonl:/parquet: manifest, wds: shards")
    p.add_argument("--labels", help='comma-separated class names, e.g. "cat,dog,car"')
    p.add_argument("--labels-file", help="class names, one per line (or a JSON list)")
    p.add_argument("--templates", help="template set name (openai_imagenet, openai_imagenet_7, photo, ...) or a "
                   "file with one template per line using {c}; default openai_imagenet (80)")
    p.add_argument("--descriptions", help="JSON {class: [sentences]} for --method cupl/describe/disclip")
    p.add_argument("--method", choices=METHODS, default=None, help="how class vectors are built (default mean)")
    p.add_argument("--pool-templates", action="store_true", help="cupl: pool descriptions with template prompts")
    p.add_argument("--reference", help="zpe: an unlabelled source of 'pretraining-like' images for debiasing")
    p.add_argument("--mad-threshold", type=float, help="zpe: keep prompts whose robust z-score exceeds this")
    p.add_argument("-k", "--top-k", dest="k", type=positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--out", help="write predictions to FILE.csv or FILE.jsonl instead of printing them")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0: in-process)")
    p.add_argument("--save-head", metavar="H", help="save the zero-shot head to H.safetensors + H.json")
    p.add_argument("--head", metavar="H", help="use a head saved with --save-head (no class names needed)")
    p.set_defaults(func=run)


def _print_prediction(p, as_json: bool) -> None:
    if as_json:
        print(json.dumps(p.as_dict(), ensure_ascii=False))
    else:
        print(f"{p.id}: " + ", ".join(f"{lab} ({s:.3f})" for lab, s in zip(p.labels, p.scores)))


def run(args) -> int:
    from clipforge.errors import UsageError
    from clipforge.zeroshot.classify import classify, read_labels, write_predictions

    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    names = None
    if args.head is None or args.labels is not None or args.labels_file is not None:
        names = read_labels(args.labels, args.labels_file)
    model = load_model_from_args(args)
    res = classify(model, args.inputs, names, method=args.method, templates=args.templates,
                   descriptions=args.descriptions, k=args.k, head=args.head, reference=args.reference,
                   mad_threshold=args.mad_threshold, pool_templates=args.pool_templates,
                   save_head=args.save_head, batch_size=args.batch_size, workers=args.workers)
    if args.out:
        n = write_predictions(res, args.out, args.k)
        print(f"wrote {n} predictions to {args.out}", file=sys.stderr)
    else:
        for p in res:
            _print_prediction(p, args.json)
        n = res.count
    if args.save_head and res.head is not None:
        print(f"saved head to {args.save_head}", file=sys.stderr)
    sk = res.skipped
    if sk.total:
        reasons = ", ".join(f"{r}: {c}" for r, c in sorted(sk.items()))
        print(f"skipped {sk.total} unreadable image(s) ({reasons})", file=sys.stderr)
        for sid, reason in sk.samples[:5]:
            print(f"  {sid}: {reason}", file=sys.stderr)
    return 0 if n else 1
