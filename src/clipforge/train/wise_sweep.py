"""A WiSE-FT sweep on several datasets: what interpolating weights buys on the fine-tuning target and what it
keeps of the zero-shot model elsewhere, one curve per dataset.

    res = wise_sweep(zero_shot, fine_tuned, [0, 0.25, 0.5, 0.75, 1],
                     ["imagefolder:handwritten/val", "imagefolder:printed/val"], templates="photo")
    res.rows              # one per (alpha, dataset): {"alpha", "dataset", "top1", "top5", "mean_per_class_recall", "n"}
    res.curves()          # {dataset: {alpha: metric}}
    res.best()            # the alpha with the highest mean metric over the datasets (ties: the smaller alpha)
    print(res.table())    # markdown: a row per alpha, a column per dataset and their mean
    res.plot("wise.png")  # a line per dataset vs alpha, the chosen alpha marked

Each alpha's model is `interpolate_models(model_a, model_b, alpha)`, scored zero-shot on every dataset
(`evaluate_zeroshot_classification`, the class names each dataset carries). At alpha 0 the weights are model A's
exactly and at 1 model B's, so the curve's ends are the two models' own scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from clipforge.data.display import shown_cell
from clipforge.data.sources import open_source
from clipforge.errors import UsageError
from clipforge.evaluate.plots import plot_alpha_curves, vet_figure
from clipforge.evaluate.report import short_names
from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
from clipforge.train.interpolate import interpolate_models

__all__ = ["WiseSweep", "wise_sweep", "SWEEP_METRICS"]

SWEEP_METRICS = ("top1", "top5", "mean_per_class_recall")


@dataclass
class WiseSweep:
    alphas: list[float]
    datasets: list[str]
    metric: str = "top1"
    rows: list[dict] = field(default_factory=list)  # {"alpha", "dataset", **metrics}, alpha-major

    def curves(self) -> dict[str, dict[float, float]]:
        """{dataset: {alpha: metric}}."""
        out: dict[str, dict[float, float]] = {d: {} for d in self.datasets}
        for r in self.rows:
            out[r["dataset"]][r["alpha"]] = float(r[self.metric])
        return out

    def mean(self) -> dict[float, float]:
        """{alpha: the metric's mean over the datasets}."""
        curves = self.curves()
        return {a: sum(c[a] for c in curves.values()) / len(curves) for a in self.alphas}

    def best(self) -> float:
        """The alpha with the highest mean metric over the datasets; the smaller alpha among equals."""
        mean = self.mean()
        return max(sorted(mean), key=lambda a: (mean[a], -a))

    def table(self) -> str:
        """Markdown: one row per alpha (the chosen one in bold), one column per dataset, then their mean."""
        curves, mean, best = self.curves(), self.mean(), self.best()
        head = [shown_cell(d) for d in self.datasets] + (["mean"] if len(self.datasets) > 1 else [])
        lines = [f"| alpha | " + " | ".join(head) + " |", "|---:|" + "---:|" * len(head)]
        for a in self.alphas:
            cells = [f"{curves[d][a]:.4f}" for d in self.datasets] + (
                [f"{mean[a]:.4f}"] if len(self.datasets) > 1 else [])
            label = f"**{a:g}**" if a == best else f"{a:g}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path, *, overwrite: bool = False):
        """A PNG (`evaluate.plots.plot_alpha_curves`): one line per dataset, named by the shortest distinct tail."""
        short = short_names(self.datasets)
        return plot_alpha_curves({short[d]: c for d, c in self.curves().items()}, path, ylabel=self.metric,
                                 best=self.best(), overwrite=overwrite)


def wise_sweep(model_a, model_b, alphas: Sequence[float], datasets: Sequence[str], *,
               templates: Optional[str] = None, metric: str = "top1", batch_size: int = 256, workers: int = 0,
               progress: Optional[bool] = False, chart=None, overwrite: bool = False) -> WiseSweep:
    """Score `interpolate_models(model_a, model_b, alpha)` zero-shot on every dataset (labelled source specs:
    typically the fine-tuning target and the data the zero-shot model should keep doing well on) at every alpha.

    `chart`: also draw the curves there (a PNG, `WiseSweep.plot`; an earlier chart is replaced, another file
    only with `overwrite`). Everything is checked before the first interpolation: alphas in [0, 1], at least one
    dataset and no repeats, `metric` one of `SWEEP_METRICS`, each dataset opens, `chart` may be written.
    """
    alphas = [float(a) for a in alphas]
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise UsageError(f"`alphas` must be numbers in [0, 1], got {alphas}")
    if len(set(alphas)) != len(alphas):
        raise UsageError(f"`alphas` repeats a value: {alphas}")
    datasets = [str(d) for d in datasets]
    if not datasets:
        raise UsageError("a sweep needs at least one dataset in `datasets` to score each alpha on")
    if len(set(datasets)) != len(datasets):
        raise UsageError(f"`datasets` names a dataset twice: {datasets}")
    if metric not in SWEEP_METRICS:
        raise UsageError(f"`metric` {metric!r}: choose from {', '.join(SWEEP_METRICS)}")
    if chart is not None:
        if not str(chart).lower().endswith(".png"):
            raise UsageError(f"`chart` must name a .png file, got {str(chart)!r}")
        vet_figure(chart, overwrite=overwrite, param="chart")
    sources = [open_source(d) for d in datasets]  # a bad spec fails now, not after the first alpha
    res = WiseSweep(alphas, datasets, metric)
    for a in alphas:
        model = interpolate_models(model_a, model_b, a).eval()
        for name, source in zip(datasets, sources):
            m = evaluate_zeroshot_classification(model, source, templates=templates, batch_size=batch_size,
                                                 workers=workers, progress=progress)["metrics"]
            if metric not in m:  # top5 with fewer than 5 classes
                raise UsageError(f"{name}: no {metric} ({', '.join(k for k in m if k != 'n')} only)")
            res.rows.append({"alpha": a, "dataset": name, **m})
    if chart is not None:
        res.plot(chart, overwrite=overwrite)
    return res
