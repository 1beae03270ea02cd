"""`clipforge data`: convert, check and build demo collections (a thin layer over clipforge.data)."""
from __future__ import annotations

import json
import sys

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
    c.add_argument("--out", required=True, help="output folder (wds) or manifest file")
    c.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default 1000)")
    c.add_argument("--no-verify", action="store_true", help="do not decode images before writing them")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=run_convert)

    k = sub.add_parser("check", help="count samples, find unreadable files, summarise sizes and captions")
    _add_source_options(k)
    k.add_argument("--json", action="store_true", help="print the report as JSON")
    k.add_argument("--limit", type=int, default=None, help="stop after this many samples")
    k.set_defaults(func=run_check)

    d = sub.add_parser("demo", help="build an offline demo dataset (digits, fonts or photos)")
    d.add_argument("name", choices=["digits", "fonts", "photos"],
                   help="which demo dataset: handwritten digits (scikit-learn), printed digits in matplotlib's "
                        "fonts (a shifted domain for adaptation), or captioned photos (scikit-image)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--size", type=int, default=32, help="digits, fonts: image side in pixels (default 32)")
    d.add_argument("--seed", type=int, default=0, help="digits, fonts: split and augmentation seed")
    d.add_argument("--json", action="store_true", help="print the written paths as JSON")
    d.set_defaults(func=run_demo)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _progress():
    return None  # tqdm decides: a bar on a terminal, none in logs and tests


def run_convert(args) -> int:
    from clipforge.data.write import convert

    src = _open(args)
    summary = convert(src, args.to, args.out, shard_size=args.shard_size, verify=not args.no_verify,
                      progress=_progress())
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


def run_demo(args) -> int:
    from clipforge.data.demo_sets import build_digits, build_fonts, build_photos

    if args.name in ("digits", "fonts"):
        paths = (build_digits if args.name == "digits" else build_fonts)(args.out, size=args.size, seed=args.seed)
    else:
        paths = build_photos(args.out)
    if args.json:
        print(json.dumps(paths, indent=1))
    else:
        for k, v in paths.items():
            print(f"{k}: {v}")
    return 0
