"""A benchmark's results as model x dataset tables (markdown and CSV, one per task and metric) and a rank plot.

`rows` are {"model", "dataset", "task", "metrics"} (a model's display name, a cell's column label). Each task's
tables list its numeric metrics (counts such as `n` left out), its primary metric first
(`report.primary_metric`: top-1, mean R@1, ...), with a mean over datasets per model. Ranks: per (task,
dataset), on the primary metric, 1 = best (competition ranking: ties share the better rank; lower is better
for a metric named `...rank...`), and a model's mean rank over the columns it has a value in. The plot draws
each model's rank per column and names its mean rank in the legend, like CLIP_benchmark's benchmark table.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from clipforge.atomic import atomic_write_text
from clipforge.data.display import shown, shown_cell, shown_label
from clipforge.evaluate.plots import save_figure
from clipforge.evaluate.report import primary_metric
from clipforge.evaluate.suite_file import slug

__all__ = ["benchmark_tables", "ranks", "write_tables", "plot_ranks"]

_COUNTS = ("n", "n_queries", "num_classes", "best_C")


def _numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in _COUNTS and not k.endswith("_n") and not k.startswith("num_")}


def benchmark_tables(rows: list[dict]) -> dict:
    """{task: {"models": [...], "datasets": [...], "metrics": {metric: {(model, dataset): value}}}} with each
    task's primary metric first."""
    out: dict = {}
    for r in rows:
        t = out.setdefault(r["task"], {"models": [], "datasets": [], "metrics": {}})
        for key, value in (("models", r["model"]), ("datasets", r["dataset"])):
            if value not in t[key]:
                t[key].append(value)
        name, value = primary_metric(r)
        values = ({name: value} if value is not None else {}) | _numeric(r["metrics"])
        for metric, v in values.items():
            t["metrics"].setdefault(metric, {})[(r["model"], r["dataset"])] = v
    return out


def _lower_is_better(metric: str) -> bool:
    return "rank" in metric


def ranks(table: dict) -> dict:
    """{(model, dataset): rank} on a task's primary metric (its first)."""
    if not table["metrics"]:
        return {}
    metric = next(iter(table["metrics"]))
    values = table["metrics"][metric]
    sign = -1.0 if _lower_is_better(metric) else 1.0
    out = {}
    for d in table["datasets"]:
        col = {m: sign * values[(m, d)] for m in table["models"] if (m, d) in values}
        for m, v in col.items():
            out[(m, d)] = 1 + sum(other > v for other in col.values())
    return out


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _markdown(suite_name: str, tables: dict, failed: list[str]) -> str:
    lines = [f"# Benchmark: {shown(suite_name)}", ""]
    for task, t in tables.items():
        rk = ranks(t)
        lines += [f"## {shown(task)}", ""]
        for i, (metric, values) in enumerate(t["metrics"].items()):
            head = ["model", *t["datasets"], "mean"] + (["mean rank"] if i == 0 else [])
            lines += [f"### {shown(metric)}", "", "| " + " | ".join(shown_cell(h) for h in head) + " |",
                      "|" + "---|" * len(head)]
            for m in t["models"]:
                vals = [values.get((m, d)) for d in t["datasets"]]
                cells = [shown_cell(m), *map(_fmt, vals), _fmt(_mean(vals))]
                if i == 0:
                    mr = _mean([rk.get((m, d)) for d in t["datasets"]])
                    cells.append("—" if mr is None else f"{mr:.2f}")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    if failed:
        lines += ["## Failed cells", ""] + [f"- {shown(f)}" for f in failed] + [""]
    return "\n".join(lines)


def _csv(t: dict, values: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", *t["datasets"]])
    for m in t["models"]:
        w.writerow([m, *("" if values.get((m, d)) is None else repr(values[(m, d)]) for d in t["datasets"])])
    return buf.getvalue()


def write_tables(folder, suite_name: str, rows: list[dict], failed: list[str] = ()) -> list[Path]:
    """Write `tables.md` and `tables/<task>.<metric>.csv` into `folder` (atomically); return the paths."""
    folder = Path(folder)
    tables = benchmark_tables(rows)
    paths = [atomic_write_text(folder / "tables.md", _markdown(suite_name, tables, list(failed)))]
    (folder / "tables").mkdir(exist_ok=True)
    for task, t in tables.items():
        for metric, values in t["metrics"].items():
            paths.append(atomic_write_text(folder / "tables" / f"{slug(task)}.{slug(metric)}.csv", _csv(t, values)))
    return paths


def plot_ranks(rows: list[dict], path) -> Path | None:
    """The rank plot (PNG): x = (task, dataset) columns, y = each model's rank there (1 at the top); None
    when there is nothing to rank."""
    tables = benchmark_tables(rows)
    columns, per_model = [], {}
    for task, t in tables.items():
        rk = ranks(t)
        for d in t["datasets"]:
            columns.append(f"{shown_label(task)}\n{shown_label(d)}")
            for m in t["models"]:
                per_model.setdefault(m, []).append(rk.get((m, d)))
    if not columns:
        return None
    n_models = len(per_model)
    fig = Figure(figsize=(max(4.0, 1.2 * len(columns) + 2), 3.2 + 0.2 * n_models))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(columns))
    for m, rs in per_model.items():
        y = np.array([np.nan if r is None else r for r in rs], dtype=float)
        mr = _mean(rs)
        label = shown_label(m) + ("" if mr is None else f" (mean rank {mr:.2f})")
        ax.plot(x, y, marker="o", label=label)
    ax.set_xticks(x, columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(1, n_models + 1))
    ax.set_ylim(n_models + 0.5, 0.5)
    ax.set_ylabel("rank (1 = best)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return save_figure(fig, path, overwrite=True)
