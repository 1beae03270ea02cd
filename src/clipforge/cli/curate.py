"""`clipforge curate score|filter|dedup|report`: clean an image-text pair collection (a thin layer over
clipforge.curate)."""
from __future__ import annotations

import argparse
import json
import sys

from clipforge.cli._common import (add_executor_args, add_overwrite_arg, engine_options, executor_from_args,
                                   positive_int)
from clipforge.cli.caption import add_captioner_args, captioner_from_args, decode_options

SOURCE_HELP = ("a source spec: folder:PATH, files:PATH, csv:/tsv:/jsonl:/parquet:PATH, wds:PATH/{000..009}.tar, "
               "or a path to auto-detect")
OUT_HELP = "output: a .jsonl / .csv / .parquet manifest, or a folder with --to wds"


def _fraction(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {value!r}")
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {v}")
    return v


def _out_args(p) -> None:
    p.add_argument("--out", "-o", required=True, help=OUT_HELP)
    p.add_argument("--to", choices=["jsonl", "csv", "parquet", "wds"], default=None,
                   help="output format (default: from --out's suffix)")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="samples per tar shard (--to wds)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_overwrite_arg(p, "OUT (and its .removals.jsonl / .summary.json)")


def register(sub) -> None:
    p = sub.add_parser("curate", help="score, filter and de-duplicate image-text pairs; report removals",
                       description="Score every image-text pair with a model, keep the pairs that pass threshold "
                                   "and size rules, remove exact and near-duplicate images, and see what was "
                                   "removed and why. Outputs are ordinary sources for train and index build.")
    cs = p.add_subparsers(dest="curate_command", metavar="ACTION")

    s = cs.add_parser("score", help="image-text cosine per pair, image and caption statistics (resumable)")
    s.add_argument("source", help=SOURCE_HELP)
    s.add_argument("--model", "-m", required=True, help="registered name, checkpoint dir, hf:ORG/NAME, ...")
    s.add_argument("--out", "-o", required=True, help="scores file to write (.parquet); re-run to resume")
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--part-size", type=positive_int, default=4096, help="samples per committed part")
    s.add_argument("--workers", type=int, default=2,
                   help="DataLoader workers decoding images (0: in-process); per actor with --executor ray")
    s.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    s.add_argument("--device", default=None)
    s.add_argument("--no-lang", dest="lang", action="store_false", help="no language guess (py3langid)")
    s.add_argument("--no-embeddings", dest="embeddings", action="store_false",
                   help="do not keep image embeddings (dedup --scores reuses them)")
    s.add_argument("--no-pixel-features", dest="pixel_features", action="store_false",
                   help="do not keep the model-free pixel descriptor (dedup's default features reuse it)")
    s.add_argument("--pixel-features", dest="pixel_features", action="store_true",
                   help=argparse.SUPPRESS)  # the default since dedup uses it; kept for existing scripts
    s.add_argument("--overwrite", action="store_true", help="replace an existing scores file or unfinished job")
    s.add_argument("--json", action="store_true")
    add_executor_args(s, "curate")
    s.set_defaults(func=run_score, lang="auto")

    f = cs.add_parser("filter", help="keep pairs that pass score / size / caption rules; record removals")
    f.add_argument("source", help=SOURCE_HELP)
    f.add_argument("--scores", required=True, help="scores file of this source (curate score)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--min-score", default=None,
                   help="cosine threshold, or laion400m (0.30), laion2b-en (0.28), laion2b-multi (0.26): "
                        "LAION's values hold for OpenAI ViT-B/32-class models only")
    g.add_argument("--keep-top", type=_fraction, default=None, help="keep this fraction of pairs, by score")
    g.add_argument("--calibrate", default=None, metavar="REF_SCORES",
                   help="a reference model's scores file on the same data: use the threshold keeping the fraction "
                        "--ref-threshold keeps for the reference model")
    f.add_argument("--ref-threshold", default=None, help="the reference model's threshold (with --calibrate)")
    f.add_argument("--min-side", type=int, default=None, help="remove images whose shorter side is below this (px)")
    f.add_argument("--max-aspect", type=float, default=None, help="remove images with long/short side above this")
    f.add_argument("--min-file-bytes", type=int, default=None, help="remove smaller image files (LAION: 5000)")
    f.add_argument("--min-caption-chars", type=int, default=None, help="remove shorter captions (LAION: 5)")
    f.add_argument("--max-caption-chars", type=int, default=None, help="remove longer captions")
    f.add_argument("--languages", default=None, help="keep captions in these languages, e.g. en,de (captions "
                   "whose language could not be told, lang 'unknown', are kept too)")
    f.add_argument("--drop-unknown-language", dest="keep_unknown_language", action="store_false",
                   help="with --languages: also remove captions whose language is 'unknown' (mostly short ones)")
    f.add_argument("--keep-uncaptioned", action="store_true", help="keep samples that have no caption")
    f.add_argument("--remove", dest="also_remove", action="append", default=[], metavar="REMOVALS",
                   help="also apply another step's removals file (e.g. dedup's), repeatable")
    _out_args(f)
    f.set_defaults(func=run_filter)

    d = cs.add_parser("dedup", help="remove exact and near-duplicate images (and duplicate captions)")
    d.add_argument("source", help=SOURCE_HELP)
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", "-m", help="model to embed the images with")
    src.add_argument("--scores", help="a scores file holding image embeddings (curate score)")
    d.add_argument("--eps", default="auto",
                   help="near-duplicates: cosine >= 1 - eps; auto (default): 0.1 x the median distance to the 10th "
                        "nearest image, measured on the data")
    d.add_argument("--max-removed", type=float, default=0.5,
                   help="refuse (writing nothing) when the near step would remove more than this share of the "
                        "images (default 0.5)")
    d.add_argument("--method", choices=["auto", "range", "semdedup"], default="auto",
                   help="range search (every pair) or SemDeDup clustering; auto picks by size")
    d.add_argument("--features", choices=["pixels", "model"], default="pixels",
                   help="pixels (default): a model-free descriptor (resized / re-encoded copies); model: the "
                        "model's embeddings (semantic near-duplicates, as SemDeDup; as good as the model)")
    d.add_argument("--keep", choices=["central", "first", "score"], default="central",
                   help="which of a group of duplicates stays (default: the one nearest the group's centre)")
    d.add_argument("--no-exact", dest="exact", action="store_false", help="skip the exact (hash) steps")
    d.add_argument("--captions", action="store_true", help="also remove samples with duplicate captions")
    d.add_argument("--caption-eps", type=float, default=0.02, help="caption embeddings: cosine >= 1 - this")
    d.add_argument("--clusters", dest="n_clusters", type=positive_int, default=None,
                   help="SemDeDup k-means clusters (default ~sqrt(n))")
    d.add_argument("--batch-size", type=positive_int, default=256)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--precision", default="auto")
    d.add_argument("--device", default=None)
    add_executor_args(d, "curate")  # the embedding step (with --model)
    _out_args(d)
    d.set_defaults(func=run_dedup)

    r = cs.add_parser("report", help="histograms, counts by reason, contact sheets of what was removed")
    r.add_argument("summaries", nargs="+", help="summary files written by filter / dedup (<out>.summary.json)")
    r.add_argument("--out", "-o", required=True, help="report folder (report.md + PNGs)")
    r.add_argument("--examples", type=positive_int, default=15, help="pairs per contact sheet")
    r.add_argument("--allow-pipe", action="store_true",
                   help="run the shell command of a pipe: source that a summary file records, to show its "
                        "images (refused otherwise: a command read from a file runs only when you accept it; see "
                        "docs/security.md)")
    r.set_defaults(func=run_report)

    c = cs.add_parser("recaption", help="a source whose samples carry a CoCa model's caption beside the original "
                                        "(resumable)")
    c.add_argument("source", help=SOURCE_HELP + " (random-access: a folder or a manifest)")
    c.add_argument("--out", "-o", required=True, help="folder to write (samples.jsonl, open it as jsonl:OUT/"
                                                      "samples.jsonl); re-run to resume")
    c.add_argument("--order", default="original-first", choices=["original-first", "synthetic-first", "synthetic"],
                   help="which captions each sample lists, first first (what training and curate score read)")
    c.add_argument("--part-size", type=positive_int, default=1024, help="images per committed part")
    c.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding images")
    c.add_argument("--overwrite", action="store_true", help="replace a job of another source, model or setting")
    c.add_argument("--json", action="store_true")
    add_captioner_args(c)
    c.set_defaults(func=run_recaption)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _print(summary: dict, as_json: bool, line: str) -> None:
    if as_json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(line)


def run_score(args) -> int:
    from clipforge.curate import score_source

    executor, options = executor_from_args(args)
    s = score_source(args.source, args.model, args.out, batch_size=args.batch_size, part_size=args.part_size,
                     workers=args.workers, device=args.device, precision=args.precision, lang=args.lang,
                     embeddings=args.embeddings, pixel_features=args.pixel_features, overwrite=args.overwrite,
                     executor=executor, executor_options=options, **engine_options(args))
    sk = s["skipped"]
    _print(s, args.json, f"scored {s['pairs']} pairs of {s['samples'] - sk['total']} images -> {s['out']}"
           + (f" (resumed after {s['resumed_from']} samples)" if s["resumed_from"] else "")
           + (f"; unreadable {sk['total']}: {json.dumps(sk['by_reason'])}" if sk["total"] else ""))
    return 0


def _done_line(s: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in s["removed_by_reason"].items()) or "none"
    return (f"kept {s['samples_kept']} of {s['samples_in']} samples -> {s['out']}\n"
            f"  removed by reason: {reasons}\n  removals: {s['removals_file']}\n  summary: {s['summary_file']}")


def run_filter(args) -> int:
    from clipforge.curate import filter_source

    langs = [x.strip() for x in args.languages.split(",") if x.strip()] if args.languages is not None else None
    s = filter_source(args.source, args.scores, args.out, to=args.to, shard_size=args.shard_size,
                      also_remove=args.also_remove, min_score=args.min_score, keep_top=args.keep_top,
                      calibrate=args.calibrate, ref_threshold=args.ref_threshold, min_side=args.min_side,
                      max_aspect=args.max_aspect, min_file_bytes=args.min_file_bytes,
                      min_caption_chars=args.min_caption_chars, max_caption_chars=args.max_caption_chars,
                      languages=langs, keep_unknown_language=args.keep_unknown_language,
                      keep_uncaptioned=args.keep_uncaptioned, overwrite=args.overwrite)
    thr = s["threshold"].get("threshold")
    line = _done_line(s) + (f"\n  score threshold {thr:.4f} ({s['threshold']['rule']}); pairs kept "
                            f"{s['pairs_kept']} of {s['pairs_in']}" if thr is not None else "")
    _print(s, args.json, line)
    return 0


def run_dedup(args) -> int:
    from clipforge.curate import dedup_source

    executor, options = executor_from_args(args)
    from clipforge.errors import UsageError

    try:
        eps = args.eps if args.eps == "auto" else float(args.eps)
    except ValueError:
        raise UsageError(f"--eps {args.eps!r}: give auto or a radius in [0, 1)") from None
    s = dedup_source(args.source, args.out, model=args.model, scores=args.scores, eps=eps, method=args.method,
                     max_removed=args.max_removed,
                     features=args.features, keep=args.keep, exact=args.exact, captions=args.captions,
                     caption_eps=args.caption_eps, n_clusters=args.n_clusters, to=args.to,
                     batch_size=args.batch_size, workers=args.workers, device=args.device,
                     precision=args.precision, shard_size=args.shard_size, overwrite=args.overwrite,
                     executor=executor, executor_options=options, **engine_options(args))
    at = ", ".join(f"eps {k}: {v}" for k, v in s["near_removed_at_eps"].items())
    _print(s, args.json, _done_line(s) + f"\n  near-duplicates at other eps: {at}"
           + "".join(f"\n  warning: {w}" for w in s["warnings"]))
    return 0


def run_recaption(args) -> int:
    from clipforge.curate.recaption import recaption_source
    from clipforge.data.sources import open_source

    s = recaption_source(open_source(args.source), captioner_from_args(args), args.out,
                         order=args.order.replace("-", "_"), batch_size=args.batch_size, part_size=args.part_size,
                         workers=args.workers, overwrite=args.overwrite, **decode_options(args))
    _print(s, args.json, f"recaptioned {s['samples']} images ({s['captioned_now']} now) -> {s['spec']}")
    return 0


def run_report(args) -> int:
    from clipforge.curate import write_report

    r = write_report(args.summaries, args.out, examples=args.examples, allow_pipe=args.allow_pipe)
    print(f"report: {r['report']} ({len(r['images'])} images)", file=sys.stdout)
    return 0
