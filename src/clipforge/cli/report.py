"""`clipforge report results.jsonl [--out report.md] [--chart report.png]`: tables and a comparison chart."""
from __future__ import annotations

from clipforge.cli._common import add_overwrite_arg
from clipforge.errors import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="summarise results.jsonl as a markdown table and a comparison chart",
        description="Read benchmark results (one JSON object per line, as `clipforge eval --out` writes), "
        "keep the latest run per full configuration (model, dataset, task and every setting, so a k-shot and a "
        "full-data probe are both shown), and print a markdown report: a table per task with its primary metric "
        "(rows labelled by the settings that differ), then every metric. With --out the report is written to a file and a chart "
        "(PNG) next to it.",
    )
    p.add_argument("results", help="results file (JSON lines)")
    p.add_argument("--out", help="write the markdown here instead of printing it (chart defaults to OUT.png)")
    p.add_argument("--chart", help="write the comparison chart (PNG) here")
    add_overwrite_arg(p, "OUT / CHART")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.evaluate.report import write_report

    if args.chart is not None and not str(args.chart).lower().endswith(".png"):
        raise UsageError(f"--chart must name a .png file, got {args.chart!r}")
    md, out_path, chart_path = write_report(args.results, args.out, args.chart, overwrite=args.overwrite)
    if out_path is None:
        print(md, end="")
    else:
        print(f"wrote {out_path}" + (f" and {chart_path}" if chart_path else ""))
    return 0
