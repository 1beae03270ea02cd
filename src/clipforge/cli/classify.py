"""`clipforge classify`: zero-shot top-k labels for image files or a whole source."""
from __future__ import annotations

import json
import sys

from clipforge.cli._common import (add_model_args, add_options, add_overwrite_arg, full_parser_for,
                                   load_encoder_from_args, option_values, positive_int)
from clipforge.errors import UsageError


def _method_options():
    """(zero-shot METHODS, few-shot FEWSHOT, every option either declares, once per name)."""
    from clipforge.adapt import FEWSHOT
    from clipforge.zeroshot import METHODS

    options = {**FEWSHOT.all_options(), **METHODS.all_options()}
    return METHODS, FEWSHOT, list(options.values())


def register(sub):
    p = sub.add_parser(
        "classify", help="label images zero-shot from class names, or few-shot from a labelled support set",
        description="Print the top-k class names with scores for each image, or write them for a whole source "
                    "(folder, manifest, shards) to CSV/JSONL. Scores are probabilities over the classes for "
                    "mean/zpe/cupl and every few-shot method, the mean prompt probability for describe, and the "
                    "rescored similarity for disclip. A few-shot method (zero-shot, linear-probe, tip-adapter, "
                    "tip-adapter-f, coop, gist) learns from --support, a labelled source (class folders or a "
                    "manifest with labels), optionally K images per class of it (--shots). "
                    "Unreadable images are skipped and counted.")
    add_model_args(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_SOURCE",
                   help="image files, or one source: folder, csv:/jsonl:/parquet: manifest, wds: shards")
    p.add_argument("--labels", help='comma-separated class names, e.g. "cat,dog,car"')
    p.add_argument("--labels-file", help="class names, one per line (or a JSON list)")
    if full_parser_for("classify"):
        methods, fewshot, options = _method_options()
        p.add_argument("--method", choices=methods.names() + fewshot.names(), default=None,
                       help="zero-shot method (default mean): " + "; ".join(f"{n}: {d}" for n, d in methods.describe())
                       + ". Few-shot method (needs --support): "
                       + "; ".join(f"{n}: {d}" for n, d in fewshot.describe()))
        add_options(p, options)
    p.add_argument("--support", metavar="SRC", help="few-shot: labelled images to learn from (a source spec)")
    p.add_argument("--shots", type=positive_int, help="few-shot: use K images per class of --support (default all)")
    p.add_argument("--seed", type=int, default=0, help="few-shot: seed for --shots sampling and training (default 0)")
    p.add_argument("-k", "--top-k", dest="k", type=positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--out", help="write predictions to FILE.csv or FILE.jsonl instead of printing them")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0: in-process)")
    p.add_argument("--save-head", metavar="H", help="save the zero-shot or few-shot head to H.safetensors + H.json")
    p.add_argument("--head", metavar="H", help="use a head saved with --save-head (no class names needed); a head "
                   "records the model it was fitted on and is refused on another")
    p.add_argument("--allow-other-model", action="store_true",
                   help="use --head even though it was fitted on another model than --model (warns)")
    add_overwrite_arg(p, "OUT / the --save-head files")
    p.set_defaults(func=run)


def _print_prediction(p, as_json: bool) -> None:
    if as_json:
        print(json.dumps(p.as_dict(), ensure_ascii=False))
    else:
        from clipforge.data.display import shown  # file names and class names: one line, no control characters

        print(f"{shown(p.id)}: " + ", ".join(f"{shown(lab)} ({s:.3f})" for lab, s in zip(p.labels, p.scores)))


def _vet_outputs(args) -> None:
    """--out and --save-head are refused before any model loads (an earlier output of ours is replaced)."""
    from clipforge.zeroshot import prediction_output
    from clipforge.zeroshot.zeroshot_head import head_output

    if args.out:
        prediction_output(args.out, overwrite=args.overwrite)
    if args.save_head:
        head_output(args.save_head, overwrite=args.overwrite, param="save_head")


def run(args) -> int:
    from clipforge.zeroshot import classify, read_labels

    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    _vet_outputs(args)
    methods, fewshot, options = _method_options()
    values = option_values(args, options)
    if args.method in fewshot or args.support is not None:
        return _run_fewshot(args, fewshot, values)
    for flag, v in (("--shots", args.shots),):
        if v is not None:
            raise UsageError(f"{flag} applies to few-shot methods (with --support)")
    names = None
    if args.head is None or args.labels is not None or args.labels_file is not None:
        names = read_labels(args.labels, args.labels_file)
    encoder = load_encoder_from_args(args)
    head = args.head
    if head is not None:
        from clipforge.adapt import load_head

        head = load_head(head)  # a zero-shot or a few-shot head
    res = classify(encoder, args.inputs, names, method=args.method, k=args.k, head=head,
                   save_head=args.save_head, batch_size=args.batch_size, workers=args.workers,
                   overwrite=args.overwrite, allow_other_model=args.allow_other_model, **values)
    return _report(args, res)


def _run_fewshot(args, fewshot, values) -> int:
    """Fit a few-shot head on --support (optionally --shots K per class), then classify with it."""
    from clipforge.adapt import SupportSet, fit_fewshot, sample_support
    from clipforge.data import open_source
    from clipforge.zeroshot import classify, read_labels

    if args.method not in fewshot:
        raise UsageError(f"--support needs a few-shot method (--method {'|'.join(fewshot.names())}), "
                         f"not {args.method or 'the zero-shot default'}")
    if args.support is None:
        raise UsageError(f"--method {args.method} learns from labelled images: give --support SRC")
    if args.head is not None:
        raise UsageError("--head uses a ready head: it does not combine with --support")
    if args.allow_other_model:
        raise UsageError("--allow-other-model applies to --head (a head fitted here is fitted on --model)")
    encoder = load_encoder_from_args(args)
    source = open_source(args.support)
    feats = encoder.encode_source(source, args.batch_size, workers=args.workers, require="label",
                                  desc="support")
    if len(feats) == 0:
        raise UsageError(f"--support {args.support}: no readable labelled images")
    names = (read_labels(args.labels, args.labels_file) if args.labels or args.labels_file
             else list(getattr(source, "classnames", None) or []))
    if not names:
        raise UsageError(f"--support {args.support} names no classes: give --labels or --labels-file")
    y = feats.label_tensor()
    idx = sample_support(y.numpy(), args.shots, args.seed)[0] if args.shots else range(len(y))
    idx = list(idx)
    support = SupportSet.from_features(feats.feats[idx], y[idx], names)
    given = {k: v for k, v in values.items() if v is not None}
    head = fit_fewshot(args.method, encoder, support, seed=args.seed, **given)
    print(f"fitted {args.method} on {len(idx)} support images ({len(names)} classes)", file=sys.stderr)
    if args.save_head:
        head.save(args.save_head, overwrite=args.overwrite)
        print(f"saved head to {args.save_head}", file=sys.stderr)
    res = classify(encoder, args.inputs, None, k=args.k, head=head, batch_size=args.batch_size,
                   workers=args.workers)
    return _report(args, res)


def _report(args, res) -> int:
    from clipforge.zeroshot import write_predictions

    if args.out:
        n = write_predictions(res, args.out, args.k, overwrite=args.overwrite)
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
        from clipforge.data.display import shown

        for sid, reason in sk.samples[:5]:
            print(f"  {shown(sid)}: {reason}", file=sys.stderr)
    return 0 if n else 1
