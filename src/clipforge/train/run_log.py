"""Run logging: JSONL metrics (resume-safe), optional TensorBoard, progress lines for logs, and a PNG of the
training curves."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from matplotlib.figure import Figure

from clipforge.atomic import atomic_write_text
from clipforge.evaluate.plots import save_figure
from clipforge.progress import format_duration

log = logging.getLogger(__name__)


def _parsed(text: str) -> List[tuple]:
    """(line, row) for each line that is a JSON object; a line cut short (a full disk, a kill mid-write) is
    left out."""
    out = []
    for ln in text.splitlines():
        try:
            row = json.loads(ln) if ln.strip() else None
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append((ln, row))
    return out


class MetricsLog:
    """Appends one JSON object per line to `metrics.jsonl`. On resume, lines past the resumed step (and any
    line cut short) are dropped first so the file never holds duplicate, orphaned or torn steps."""

    def __init__(self, path: Path, resume_step: Optional[int] = None, tensorboard_dir: Optional[Path] = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [ln for ln, row in _parsed(self.path.read_text(errors="replace"))
                    if row.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
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
    return [row for _, row in _parsed(p.read_text(errors="replace"))]


def progress_line(row: Dict, total_steps: int, train_time_s: float) -> str:
    """One log line for a metrics row: step, loss, lr, samples/s and the ETA at the pace so far.

    e.g. "step 40/200  loss 2.3120  lr 1.20e-03  128.4 samples/s  elapsed 31s  ETA 2m04s"
    """
    step = row["step"]
    eta = train_time_s / step * (total_steps - step) if step else 0.0
    return (f"step {step}/{total_steps}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
            f"{row['samples_per_s']:.1f} samples/s  elapsed {format_duration(train_time_s)}  "
            f"ETA {format_duration(eta)}")


def plot_curves(metrics_path: Path, out_png: Path) -> Optional[Path]:
    """Loss, learning rate, logit scale and zero-shot accuracy against the step, one panel each."""
    rows = read_metrics(metrics_path)
    panels = [("loss", "training loss"), ("lr", "learning rate"), ("logit_scale", "logit scale"),
              ("zeroshot_top1", "zero-shot top-1")]
    panels = [(k, t) for k, t in panels if any(k in r for r in rows)]
    if not panels:
        return None
    fig = Figure(figsize=(4 * len(panels), 3.2))
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 20 else None, ms=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_png, overwrite=True)  # inside the run folder clipforge owns
