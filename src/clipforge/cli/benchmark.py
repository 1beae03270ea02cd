"""`clipforge benchmark`: run a suite of (dataset, task, options) cells for several models -> tables, a rank plot."""
from __future__ import annotations

import json
import sys


def register(sub):
    p = sub.add_parser(
        "benchmark", help="run a benchmark suite (models x datasets x tasks) -> results.jsonl, tables, rank plot",
        description="Run every (model, cell) of SUITE (a YAML file, or a packaged suite: demo) into --out: "
                    "results.jsonl (one eval record per finished cell), tables.md and tables/*.csv (a model x "
                    "dataset table per task and metric), ranks.png (each model's rank per dataset, mean rank). "
                    "Resumable: a rerun skips finished cells, so a changed suite runs only its new cells. A cell "
                    "that fails is recorded with its error and the run goes on; the exit status is then 1. "
                    "See docs/evaluation.md, 'Benchmark suites'.")
    p.add_argument("suite", help="suite YAML file, or the name of a packaged suite (demo)")
    p.add_argument("--model", "-m", action="append",
                   help="model reference (registered name, checkpoint dir, hf:..., open_clip:...); repeatable; "
                        "replaces the suite's models")
    p.add_argument("--out", required=True, help="benchmark folder (created, or continued when it is one)")
    p.add_argument("--format", choices=["clip_benchmark"],
                   help="also write CLIP_benchmark's per-result JSON files under OUT/clip_benchmark/")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder that is not a clipforge benchmark")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.encode import pick_device
    from clipforge.evaluate.suite import run_benchmark

    summary = run_benchmark(args.suite, out=args.out, models=args.model, format=args.format,
                            overwrite=args.overwrite, device=pick_device(args.device))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['ran']} cell(s) run, {summary['skipped']} already finished, {len(summary['failed'])} "
              f"failed -> {summary['out']} (tables.md, tables/, ranks.png)")
        for f in summary["failed"]:
            print(f"failed: {f['model']} | {f['dataset']} | {f['task']}: {f['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0
