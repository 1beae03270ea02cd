"""`clipforge classify`: zero-shot top-k labels for image files or a whole source."""
from __future__ import annotations

import json
import sys

from clipforge.cli._common import (add_model_args, add_options, load_encoder_from_args, option_values,
                                   positive_int, full_parser_for)
from clipforge.errors import UsageError


def _method_options():
    from clipforge.zeroshot import METHODS

    return METHODS, list(METHODS.all_options().values())


def register(sub):
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
    if full_parser_for("classify"):
        methods, options = _method_options()
        p.add_argument("--method", choices=methods.names(), default=None,
                       help="zero-shot method (default mean): " + "; ".join(f"{n}: {d}" for n, d in methods.describe()))
        add_options(p, options)
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
    from clipforge.zeroshot import classify, read_labels, write_predictions

    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    names = None
    if args.head is None or args.labels is not None or args.labels_file is not None:
        names = read_labels(args.labels, args.labels_file)
    encoder = load_encoder_from_args(args)
    res = classify(encoder, args.inputs, names, method=args.method, k=args.k, head=args.head,
                   save_head=args.save_head, batch_size=args.batch_size, workers=args.workers,
                   **option_values(args, _method_options()[1]))
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
