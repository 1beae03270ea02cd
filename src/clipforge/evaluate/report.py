"""results.jsonl -> a markdown report (a summary table per task + all metrics) and a comparison chart.

Only the latest record per (model, dataset, task) is reported. Each task has a primary metric shown in the
summary and chart: top-1 accuracy for classification and probes, the mean of image->text and text->image
R@1 for image-text retrieval, AP@50 for INQUIRE-style retrieval; other tasks use their first metric.
"""
from __future__ import annotations

import os
from pathlib import Path

from clipforge.atomic import temp_sibling
from clipforge.evaluate.results import latest_results, read_results

__all__ = ["primary_metric", "markdown_report", "write_report"]

_PRIMARY = ("top1", "AP@50", "mean_per_class_recall", "mAP")


def primary_metric(record: dict) -> tuple[str, float | None]:
    """(name, value) of the number a record is summarised by."""
    m = record.get("metrics", {})
    if "i2t_R@1" in m and "t2i_R@1" in m and m["i2t_R@1"] is not None and m["t2i_R@1"] is not None:
        return "mean R@1", (m["i2t_R@1"] + m["t2i_R@1"]) / 2
    for name in _PRIMARY:
        if isinstance(m.get(name), (int, float)):
            return name, float(m[name])
    for name, v in m.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and name not in ("n", "n_queries"):
            return name, float(v)
    return "-", None


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"
    return str(v)


def _esc(s) -> str:
    return str(s).replace("|", "\\|")


def _panels(records: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{task (metric): {dataset: {model: primary value}}} for the chart."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in records:
        name, v = primary_metric(r)
        if v is not None:
            out.setdefault(f"{r['task']} ({name})", {}).setdefault(r["dataset"], {})[r["model"]] = v
    return out


def markdown_report(records: list[dict], chart_name: str | None = None, title: str = "clipforge results") -> str:
    records = latest_results(records)
    lines = [f"# {title}", ""]
    if not records:
        return "\n".join(lines + ["No results.", ""])
    if chart_name:
        lines += [f"![comparison]({chart_name})", ""]
    tasks = list(dict.fromkeys(r["task"] for r in records))
    for task in tasks:
        rs = [r for r in records if r["task"] == task]
        metric = primary_metric(rs[0])[0]
        datasets = list(dict.fromkeys(r["dataset"] for r in rs))
        models = list(dict.fromkeys(r["model"] for r in rs))
        cell = {(r["model"], r["dataset"]): primary_metric(r)[1] for r in rs}
        lines += [f"## {task} — {metric}", "", "| model | " + " | ".join(map(_esc, datasets)) + " |",
                  "|---|" + "---:|" * len(datasets)]
        for m in models:
            lines.append(f"| {_esc(m)} | " + " | ".join(_fmt(cell.get((m, d))) for d in datasets) + " |")
        lines.append("")
    lines += ["## All metrics", "", "| model | dataset | task | metrics | templates | config | time (s) | when |",
              "|---|---|---|---|---|---|---:|---|"]
    for r in records:
        ms = ", ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items() if not isinstance(v, (dict, list)))
        lines.append(
            f"| {_esc(r['model'])} | {_esc(r['dataset'])} | {_esc(r['task'])} | {_esc(ms)} | "
            f"{r.get('templates_hash') or '—'} | {r.get('config_hash', '—')} | {_fmt(r.get('elapsed_s'))} | "
            f"{r.get('time', '—')} |"
        )
    versions = records[-1].get("versions") or {}
    if versions:
        lines += ["", "Versions (latest run): " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return "\n".join(lines) + "\n"


def write_report(results_path, out=None, chart=None) -> tuple[str, Path | None, Path | None]:
    """Read results, write the markdown to `out` (if given) and the chart PNG to `chart` (if given; default
    `<out>.png` when `out` is given). Returns (markdown, markdown path, chart path)."""
    records = read_results(results_path)
    if out is not None and chart is None:
        chart = Path(out).with_suffix(".png")
    chart_path = None
    if chart is not None:
        panels = _panels(latest_results(records))
        if panels:
            from clipforge.evaluate.plots import plot_comparison

            chart_path = plot_comparison(panels, chart)
    chart_ref = None
    if chart_path is not None:
        chart_ref = os.path.relpath(chart_path, Path(out).parent) if out is not None else str(chart_path)
    md = markdown_report(records, chart_ref)
    out_path = None
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_sibling(out_path)  # the umask's permissions, not mkstemp's 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(md)
            os.replace(tmp, out_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return md, out_path, chart_path
