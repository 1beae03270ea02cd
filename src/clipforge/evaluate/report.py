"""results.jsonl -> a markdown report (a summary table per task + all metrics) and a comparison chart.

The latest record per full configuration is reported (`results.record_key`: model, dataset, task and the
config hash), so a 4-shot probe and a full-data probe of the same model are two rows, not one replacing the
other. Within a task, a row is labelled by its model plus the configuration settings that differ between the
task's records (e.g. `tiny [k_shot=4]`). Each task has a primary metric shown in the summary and chart:
top-1 accuracy for classification and probes (few-shot records: one table with model, dataset, method, k
and top-1 mean ± std over seeds, and an accuracy-vs-shots chart, one line per method, zero-shot flat), the
mean of image->text and text->image R@1 for image-text retrieval, AP@50 for INQUIRE-style retrieval; other
tasks use their first metric. Models are shown by `clipforge.models.display_name` (a run's checkpoint
`/home/me/runs/digits/final` as `digits`; two that would look alike fall back to the shortest trailing part
of their references that tells them apart); the charts name datasets by that shortest trailing part (`val`,
not `/data/digits/val`); the "All metrics" table keeps every reference whole. Every name and value from the results is written
through `clipforge.data.display` (`shown`, and `shown_cell` in tables: `|` escaped too), so a newline or an
escape sequence in a dataset path or a config value can neither forge a line nor reach a terminal raw.
"""
from __future__ import annotations

import os
from pathlib import Path

from clipforge.atomic import atomic_write_text
from clipforge.data.display import shown, shown_cell
from clipforge.evaluate.plots import FIGURE_KIND, plot_comparison, plot_shots
from clipforge.output_dirs import OutputFile, file_starts_with, png_marked
from clipforge.evaluate.results import latest_results, read_results
from clipforge.models.display_name import display_name

__all__ = ["primary_metric", "config_labels", "short_names", "model_names", "markdown_report", "write_report",
           "shot_curves"]

FEWSHOT_TASK = "few-shot"

REPORT_MARK = "<!-- clipforge evaluation report -->\n"  # first line of a written report: a rerun replaces it
_PRIMARY = ("top1", "AP@50", "mean_per_class_recall", "mAP")
_NOT_CONFIG = ("task", "dataset")  # already in their own columns


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
    return shown_cell(s)


def config_labels(records: list[dict]) -> list[str]:
    """Per record: its model's shown name (`model_names`), plus `[key=value, ...]` for the config settings
    that vary among `records`."""
    configs = [{k: v for k, v in (r.get("config") or {}).items() if k not in _NOT_CONFIG} for r in records]
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    names = model_names(r["model"] for r in records)
    out = []
    for r, c in zip(records, configs):
        parts = [f"{k}={_fmt(c.get(k))}" for k in varying]
        name = names[str(r["model"])]
        out.append(f"{name} [{', '.join(parts)}]" if parts else name)
    return out


def model_names(refs) -> dict[str, str]:
    """model reference -> the name it is shown by: `display_name` (a run's name, not `final`), or, for
    references whose display names collide, the shortest trailing part of the reference that tells it apart."""
    refs = list(dict.fromkeys(str(r) for r in refs))
    shown_as = {r: display_name(r) for r in refs}
    clash = [r for r in refs if sum(v == shown_as[r] for v in shown_as.values()) > 1]
    return {**shown_as, **short_names(clash)}


def short_names(names) -> dict[str, str]:
    """name -> the shortest trailing part of it (path components, after a `kind:` prefix) that is unique."""
    names = list(dict.fromkeys(str(n) for n in names))

    def parts(n: str) -> list[str]:
        body = n.split(":", 1)[1] if ":" in n and not os.path.isabs(n) and "/" in n.split(":", 1)[1] else n
        return [p for p in body.replace("\\", "/").split("/") if p] or [n]

    split = {n: parts(n) for n in names}
    out = {}
    for n in names:
        for depth in range(1, len(split[n]) + 1):
            tail = "/".join(split[n][-depth:])
            if all("/".join(split[m][-depth:]) != tail for m in names if m != n):
                break
        out[n] = tail
    return out


def shot_curves(records: list[dict]) -> dict[str, dict[str, dict[int, tuple[float, float]]]]:
    """Few-shot records -> {"model on dataset": {method: {k: (top-1 mean, std)}}} (the latest per configuration)."""
    rs = [r for r in records if r["task"] == FEWSHOT_TASK]
    short_m, short_d = model_names(r["model"] for r in rs), short_names(r["dataset"] for r in rs)
    out: dict = {}
    for r in rs:
        c, m = r.get("config") or {}, r.get("metrics") or {}
        if c.get("k_shot") is None or m.get("top1") is None:
            continue
        title = f"{short_m[r['model']]} on {short_d[r['dataset']]}"
        out.setdefault(title, {}).setdefault(c.get("method"), {})[int(c["k_shot"])] = (
            float(m["top1"]), float(m.get("top1_std") or 0.0))
    return out


def _shots_markdown(records: list[dict]) -> list[str]:
    """One few-shot table: a row per (model, dataset, method, k), top-1 mean ± std over the seeds."""
    rs = [r for r in records if r["task"] == FEWSHOT_TASK and (r.get("config") or {}).get("k_shot") is not None
          and (r.get("metrics") or {}).get("top1") is not None]
    if not rs:
        return []
    names = model_names(r["model"] for r in rs)
    rs.sort(key=lambda r: (names[str(r["model"])], str(r["dataset"]), str(r["config"].get("method")),
                           int(r["config"]["k_shot"])))
    lines = ["## few-shot — top-1 (mean ± std over seeds)", "",
             "| model | dataset | method | k (shots) | top-1 | seeds |", "|---|---|---|---:|---:|---:|"]
    for r in rs:
        c, m = r["config"], r["metrics"]
        seeds = c.get("seeds")
        lines.append(f"| {_esc(names[str(r['model'])])} | {_esc(r['dataset'])} | {_esc(c.get('method') or '—')} | "
                     f"{int(c['k_shot'])} | {m['top1']:.4f} ± {float(m.get('top1_std') or 0.0):.4f} | "
                     f"{_esc(len(seeds) if isinstance(seeds, list) else (seeds if seeds is not None else '—'))} |")
    return lines + [""]


def _panels(records: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{task (metric): {dataset: {row label: primary value}}} for the chart, with short names."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    records = [r for r in records if r["task"] != FEWSHOT_TASK]  # drawn as curves (`shot_curves`)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    short_ds = short_names(r["dataset"] for r in records)
    for task in tasks:
        rs = [r for r in records if r["task"] == task]
        for r, label in zip(rs, config_labels(rs)):
            name, v = primary_metric(r)
            if v is not None:
                out.setdefault(f"{task} ({name})", {}).setdefault(short_ds[r["dataset"]], {})[label] = v
    return out


def markdown_report(records: list[dict], chart_name: str | None = None, title: str = "clipforge results",
                    shots_name: str | None = None) -> str:
    records = latest_results(records)
    lines = [f"# {shown(title)}", ""]
    if not records:
        return "\n".join(lines + ["No results.", ""])
    if chart_name:
        lines += [f"![comparison]({chart_name})", ""]
    if shots_name:
        lines += [f"![accuracy vs shots]({shots_name})", ""]
    lines += _shots_markdown(records)
    tasks = list(dict.fromkeys(r["task"] for r in records if r["task"] != FEWSHOT_TASK))
    for task in tasks:
        rs = [r for r in records if r["task"] == task]
        labels = config_labels(rs)
        metric = primary_metric(rs[0])[0]
        datasets = list(dict.fromkeys(r["dataset"] for r in rs))
        rows = list(dict.fromkeys(labels))
        cell = {(label, r["dataset"]): primary_metric(r)[1] for label, r in zip(labels, rs)}
        lines += [f"## {shown(task)} — {shown(metric)}", "", "| model | " + " | ".join(map(_esc, datasets)) + " |",
                  "|---|" + "---:|" * len(datasets)]
        for row in rows:
            lines.append(f"| {_esc(row)} | " + " | ".join(_esc(_fmt(cell.get((row, d)))) for d in datasets) + " |")
        lines.append("")
    lines += ["## All metrics", "", "| model | dataset | task | metrics | templates | config | time (s) | when |",
              "|---|---|---|---|---|---|---:|---|"]
    for r in records:
        ms = ", ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items() if not isinstance(v, (dict, list)))
        lines.append(
            f"| {_esc(r['model'])} | {_esc(r['dataset'])} | {_esc(r['task'])} | {_esc(ms)} | "
            f"{_esc(r.get('templates_hash') or '—')} | {_esc(r.get('config_hash', '—'))} | "
            f"{_esc(_fmt(r.get('elapsed_s')))} | {_esc(r.get('time', '—'))} |"
        )
    versions = records[-1].get("versions") or {}
    if versions:
        lines += ["", "Versions (latest run): " + shown(", ".join(f"{k} {v}" for k, v in versions.items()))]
    return "\n".join(lines) + "\n"


def write_report(results_path, out=None, chart=None, *, overwrite: bool = False
                 ) -> tuple[str, Path | None, Path | None]:
    """Read results, write the markdown to `out` (if given) and the chart PNG to `chart` (if given; default
    `<out>.png` when `out` is given); few-shot records are drawn as accuracy-vs-shots curves in
    `<chart>-shots.png`. Returns (markdown, markdown path, chart path). An existing file at any of these paths
    is replaced only if it is an earlier report or chart, or with `overwrite` (`output_dirs`)."""
    report_out = OutputFile(overwrite=overwrite, param="out", owned=file_starts_with(REPORT_MARK.encode()))
    chart_out = OutputFile(overwrite=overwrite, param="chart", owned=png_marked(FIGURE_KIND))
    if out is not None:
        report_out.vet(out)
    if out is not None and chart is None:
        chart = Path(out).with_suffix(".png")
    shots = None if chart is None else Path(chart).with_name(Path(chart).stem + "-shots.png")
    for p in (chart, shots):
        if p is not None:
            chart_out.vet(p)  # every path refused before anything is written
    records = read_results(results_path)
    chart_path = shots_path = None
    if chart is not None:
        panels = _panels(latest_results(records))
        if panels:
            chart_path = plot_comparison(panels, chart, overwrite=overwrite)
        curves = shot_curves(latest_results(records))
        if curves:
            shots_path = plot_shots(curves, shots, overwrite=overwrite)

    def ref(p):
        if p is None:
            return None
        return os.path.relpath(p, Path(out).parent) if out is not None else str(p)

    md = markdown_report(records, ref(chart_path), shots_name=ref(shots_path))
    out_path = None
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, REPORT_MARK + md, output=report_out)
    return md, out_path, chart_path
