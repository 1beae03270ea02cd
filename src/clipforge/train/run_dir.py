"""A training run's directory: what counts as a run, and when an existing one may be continued or replaced."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from clipforge.errors import UsageError
from clipforge.output_dirs import claim_output_dir, vet_output_dir

RUN_KIND = "training-run"


def is_run_dir(path: Path) -> bool:
    """A run directory an older version wrote (without the folder marker)."""
    return (path / "config.yaml").is_file() and any(
        (path / n).exists() for n in ("metrics.jsonl", "checkpoints", "final", "summary.json"))


def vet_run_dir(out_dir, resume: Optional[str], overwrite: bool) -> Path:
    """The run directory, checked: an existing run is continued only with `resume`, restarted only with
    `overwrite`; a folder that is not a run is refused unless `overwrite`."""
    if resume is not None and overwrite:
        raise UsageError("`resume` and `overwrite` contradict each other: one continues the run, the other "
                         "starts it again")
    out, state = vet_output_dir(out_dir, RUN_KIND, overwrite=overwrite, recognise=is_run_dir)
    if state == "same" and resume is None and not overwrite:
        raise UsageError(f"{out} holds a training run: pass `resume` latest to continue it, or `overwrite` to "
                         "start it again from scratch")
    return out


def claim_run_dir(out: Path, overwrite: bool) -> None:
    """Mark `out` as a run (main process only); with `overwrite`, the old one is replaced by an empty one."""
    claim_output_dir(out, RUN_KIND, overwrite=overwrite, recognise=is_run_dir, fresh=overwrite)
