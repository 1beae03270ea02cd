"""PNG plots: confusion matrix, a grouped-bar model comparison, accuracy vs shots, and metric vs WiSE-FT alpha.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed). Files are
written atomically (`clipforge.atomic`). Names drawn as text (class names, models, datasets, methods) pass
through `clipforge.data.display.shown_label`: a control character is escaped, and a `$` is drawn as itself, never
read as mathtext (a malformed formula in a class name would fail the whole figure).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clipforge.atomic import atomic_write
from clipforge.output_dirs import PNG_MARK_KEY, OutputFile, png_marked
from clipforge.data.display import shown_label

__all__ = ["plot_confusion_matrix", "plot_comparison", "plot_shots", "plot_alpha_curves", "save_figure",
           "vet_figure"]


FIGURE_KIND = "figure"  # the PNG's clipforge tEXt mark: a rerun may replace its own chart


def vet_figure(path, *, overwrite: bool = False, param: str = "path") -> tuple[Path, OutputFile]:
    """Check a figure's destination (before the work that draws it): a chart clipforge drew there is replaced,
    another file only with `overwrite`; a folder, link, device or FIFO never. Returns (path, its OutputFile)."""
    output = OutputFile(overwrite=overwrite, param=param, owned=png_marked(FIGURE_KIND))
    path, _ = output.vet(path)
    return path, output


def save_figure(fig: Figure, path, dpi: int = 110, *, overwrite: bool = False) -> Path:
    """Render `fig` to a PNG at `path`, atomically. An existing file there is replaced only if clipforge drew
    it (its PNG mark), or with `overwrite`; a folder, link, device or FIFO is always refused."""
    path, output = vet_figure(path, overwrite=overwrite)
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight",
                                                    metadata={PNG_MARK_KEY: FIGURE_KIND}), output=output)


def plot_confusion_matrix(
    cm, path, classnames: Sequence[str] | None = None, normalize: bool = True, title: str | None = None,
    max_labels: int = 40, *, overwrite: bool = False,
) -> Path:
    """Rows = true class, columns = predicted. `normalize` shows each row as fractions of its support.
    Tick labels are drawn only up to `max_labels` classes (beyond that they are unreadable)."""
    cm = np.asarray(cm, dtype=np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = cm.shape[0]
    size = min(4 + 0.3 * n, 20)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(shown_label(title) if title else ("confusion matrix (row-normalised)" if normalize
                                                   else "confusion matrix"))
    if n <= max_labels:
        names = [shown_label(c) for c in classnames] if classnames is not None else [str(i) for i in range(n)]
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    txt = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > 0.5 * cm.max() else "black")
    return save_figure(fig, path, overwrite=overwrite)


def plot_comparison(panels: dict[str, dict[str, dict[str, float]]], path, ylabel: str = "score", *,
                    overwrite: bool = False) -> Path:
    """Grouped bars: one panel per key of `panels` (e.g. task), groups = datasets, bars = models.

    panels: {panel title: {group (dataset): {series (model): value}}}; missing values are left blank.
    """
    panels = {k: v for k, v in panels.items() if v}
    n = max(1, len(panels))
    # width follows the number of bars (about 0.45 inch each, so their value labels fit), within 5..16 inches
    bars_per_panel = max((len(g) * len({m for s in g.values() for m in s}) for g in panels.values()), default=1)
    fig = Figure(figsize=(min(16.0, max(5.0, 2.0 + 0.45 * bars_per_panel)), 3.2 * n), layout="constrained")
    for row, (title, groups) in enumerate(panels.items()):
        ax = fig.add_subplot(n, 1, row + 1)
        datasets = list(groups)
        models = sorted({m for g in groups.values() for m in g})
        width = 0.8 / max(1, len(models))
        x = np.arange(len(datasets))
        many = len(models) * len(datasets) > 12
        for i, m in enumerate(models):
            vals = [groups[d].get(m, np.nan) for d in datasets]
            bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=shown_label(m))
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.3g}" for v in vals], fontsize=7, padding=2,
                         rotation=90 if many else 0)
        top = max([v for g in groups.values() for v in g.values() if np.isfinite(v)] or [1.0])
        ax.set_ylim(0, top * (1.25 if many else 1.15) if top > 0 else 1.0)  # room for the value labels
        ax.set_xticks(x, [shown_label(d) for d in datasets], rotation=20 if len(datasets) > 3 else 0,
                      ha="right" if len(datasets) > 3 else "center")
        ax.set_title(shown_label(title))
        ax.set_ylabel(shown_label(ylabel))
        ax.grid(axis="y", alpha=0.3)
        _legend_outside(ax, title="model")
    return save_figure(fig, path, overwrite=overwrite)


def _legend_outside(ax, title: str | None = None) -> None:
    """The legend to the right of the axes, never over the bars or lines (names can be long)."""
    ax.legend(fontsize=8, title=title, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0, frameon=False)


def plot_shots(panels: dict[str, dict[str, dict[int, tuple[float, float]]]], path, ylabel: str = "top-1 accuracy",
               flat: Sequence[str] = ("zero-shot",), *, overwrite: bool = False) -> Path:
    """Accuracy-vs-shots curves: one panel per key (model on dataset), one line per method with its spread.

    panels: {panel title: {method: {k: (mean, std)}}}. Methods named in `flat` (the zero-shot baseline, which
    does not use the shots) are drawn as a dashed horizontal line; the x axis is log2-spaced (1, 2, 4, ...).
    """
    panels = {k: v for k, v in panels.items() if v}
    n = max(1, len(panels))
    fig = Figure(figsize=(7.5, 3.4 * n), layout="constrained")
    for row, (title, methods) in enumerate(panels.items()):
        ax = fig.add_subplot(n, 1, row + 1)
        shots = sorted({k for curve in methods.values() for k in curve})
        for name in sorted(methods):
            curve = methods[name]
            ks = sorted(curve)
            mean = np.array([curve[k][0] for k in ks])
            std = np.array([curve[k][1] for k in ks])
            if name in flat:
                ax.axhline(float(mean.mean()), linestyle="--", color="grey", label=shown_label(name))
                continue
            line, = ax.plot(ks, mean, marker="o", label=shown_label(name))
            ax.fill_between(ks, mean - std, mean + std, alpha=0.15, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_xlabel("shots per class")
        ax.set_ylabel(shown_label(ylabel))
        ax.set_title(shown_label(title))
        ax.grid(alpha=0.3)
        _legend_outside(ax, title="method")
    return save_figure(fig, path, overwrite=overwrite)


def plot_alpha_curves(curves: dict[str, dict[float, float]], path, ylabel: str = "top-1 accuracy",
                      best: float | None = None, title: str | None = None, *, overwrite: bool = False) -> Path:
    """Metric vs interpolation weight: one line per dataset (`curves`: {dataset: {alpha: value}}), alpha 0 (the
    zero-shot model) on the left, 1 (the fine-tuned one) on the right; `best` is marked by a dashed line."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        alphas = sorted(curve)
        ax.plot(alphas, [curve[a] for a in alphas], marker="o", label=shown_label(name))
    if best is not None:
        ax.axvline(best, linestyle="--", color="grey", label=f"chosen alpha {best:g}")
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("alpha (0: model A, 1: model B)")
    ax.set_ylabel(shown_label(ylabel))
    ax.set_title(shown_label(title) if title else "WiSE-FT: weight-space interpolation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path, overwrite=overwrite)
