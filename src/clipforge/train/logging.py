"""Run logging: JSONL metrics (resume-safe), optional TensorBoard, and a PNG of the training curves."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per line to `metrics.jsonl`. On resume, lines past the resumed step are
    dropped first so the file never holds duplicate or orphaned steps."""

    def __init__(self, path: Path, resume_step: Optional[int] = None, tensorboard_dir: Optional[Path] = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(k + "\n" for k in kept))
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(tensorboard_dir))
            except Exception as e:  # noqa: BLE001 - tensorboard is optional
                log.warning("TensorBoard logging disabled: %s (pip install tensorboard)", e)

    def write(self, row: Dict) -> None:
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> List[Dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def plot_curves(metrics_path: Path, out_png: Path) -> Optional[Path]:
    """Loss, learning rate, logit scale and zero-shot accuracy against the step, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    panels = [("loss", "training loss"), ("lr", "learning rate"), ("logit_scale", "logit scale"),
              ("zeroshot_top1", "zero-shot top-1")]
    panels = [(k, t) for k, t in panels if any(k in r for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    axes = [axes] if len(panels) == 1 else axes
    for ax, (key, title) in zip(axes, panels):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 20 else None, ms=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(out_png).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return Path(out_png)
