"""The benchmark-suite runner: every (model, cell) of a suite (`suite_file`) -> one results folder.

    summary = run_benchmark("demo", models=["tiny", "runs/digits/final"], out="bench-out")
    summary["failed"]     # [] when every cell ran

The folder (a clipforge `benchmark` artifact: continued by a rerun, anything else refused unless `overwrite`):

    results.jsonl         `run_eval` records, each with `cell` (a stable hash of model reference, dataset as
                          written, task, options as given, split, image_root, seed and precision), `status`
                          "ok" or "failed" (with `error`), `cell_part` [i, n] and `cell_run`
    tables.md, tables/    model x dataset tables per task and metric (`suite_tables`)
    ranks.png             each model's rank per dataset and its mean rank
    clip_benchmark/       with `format="clip_benchmark"`: CLIP_benchmark's per-result JSON files
    data/                 demo sets the suite names (`suite_data`), built on first use

Resumable: a cell's records are appended in one write after it finished, so a rerun skips every cell whose
records are all there (a crash mid-cell, or a torn last line, re-runs that cell only, without duplicates), and a
changed suite runs only its new cells. A cell that fails (unreadable data, a bad option value) is recorded as
failed with its one-line error and the run goes on; the next run tries it again. The tables and the plot are
rewritten after every run from the latest finished record of each cell of the suite as it is now.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Optional, Sequence

from clipforge.encode import Encoder
from clipforge.errors import ClipforgeError, UsageError
from clipforge.evaluate.clip_benchmark_format import clip_benchmark_result, write_clip_benchmark
from clipforge.evaluate.results import append_results, config_hash, make_record, read_results
from clipforge.evaluate.runner import run_eval
from clipforge.evaluate.suite_data import resolve_demo_paths
from clipforge.evaluate.suite_file import Suite, SuiteCell, SuiteModel, load_suite
from clipforge.evaluate.suite_tables import plot_ranks, write_tables
from clipforge.models import load_model
from clipforge.models.display_name import display_name
from clipforge.output_dirs import claim_output_dir

__all__ = ["run_benchmark", "cell_key", "FORMATS", "BENCHMARK_KIND"]

log = logging.getLogger(__name__)
BENCHMARK_KIND = "benchmark"
FORMATS = ("clip_benchmark",)
RESULTS = "results.jsonl"


def cell_key(model: SuiteModel, cell: SuiteCell, settings: dict) -> str:
    """What makes a (model, cell) the same experiment on a rerun (display names and batch size do not)."""
    return config_hash({"model": model.ref, "dataset": cell.dataset, "task": cell.task, "options": cell.options,
                        "split": cell.split, "image_root": cell.image_root, "seed": settings["seed"],
                        "precision": settings["precision"]})


def _column(cell: SuiteCell) -> str:
    if cell.name:
        return cell.name
    spec = cell.dataset.replace("{", "").replace("}", "")
    body = spec.split(":", 1)[1] if ":" in spec and not spec.startswith("/") else spec
    return display_name(body) if "/" in body else body


def _columns(cells) -> list[str]:
    """Each cell's table column: its name, else from its dataset; two cells of a task alike get their options."""
    labels = [_column(c) for c in cells]
    for i, c in enumerate(cells):
        if any(labels[j] == labels[i] and cells[j].task == c.task for j in range(len(cells)) if j != i):
            opts = ", ".join(f"{k}={v}" for k, v in sorted(c.options.items())) or f"#{i}"
            labels[i] = f"{labels[i]} [{opts}]"
    return labels


def _finished(path: Path) -> dict:
    """cell key -> its latest complete run's records (every `cell_part` of one `cell_run` present)."""
    if not path.is_file():
        return {}
    runs: dict = {}
    for r in read_results(path):
        if isinstance(r.get("cell"), str) and isinstance(r.get("cell_part"), list) and len(r["cell_part"]) == 2:
            runs.setdefault((r["cell"], r.get("cell_run")), []).append(r)
    out = {}
    for (key, _), recs in runs.items():  # file order: a later complete run replaces an earlier one
        if len({tuple(r["cell_part"]) for r in recs}) == recs[0]["cell_part"][1]:
            out[key] = recs
    return out


def _end_torn_line(path: Path) -> None:
    """After a crash mid-append the file may end inside a line: end it, so the next record starts its own."""
    try:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            torn = f.read(1) != b"\n"
    except (FileNotFoundError, OSError):
        return
    if torn:
        with open(path, "ab") as f:
            f.write(b"\n")


def _error_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, ClipforgeError) else f"{type(e).__name__}: {text}"


class _Models:
    """Each model loaded once, on first use (a load failure is remembered and fails its cells)."""

    def __init__(self, device, precision: str):
        self.device, self.precision, self.loaded = device, precision, {}

    def get(self, ref: str):
        if ref not in self.loaded:
            try:
                self.loaded[ref] = Encoder.from_model(load_model(ref), device=self.device, precision=self.precision)
            except Exception as e:  # noqa: BLE001 - recorded against each of the model's cells
                self.loaded[ref] = e
        got = self.loaded[ref]
        if isinstance(got, BaseException):
            raise got
        return got


def run_benchmark(suite, *, out, models: Optional[Sequence[str]] = None, format: Optional[str] = None,
                  overwrite: bool = False, device=None, progress: Optional[bool] = None) -> dict:
    """Run every (model, cell) of `suite` (a YAML path, a packaged suite's name, a mapping or a `Suite`) not
    already finished in the folder `out`; write the tables, the rank plot and (`format="clip_benchmark"`)
    CLIP_benchmark's result files. `models` (references) replaces the suite's models.

    Returns {"out", "results", "ran", "skipped", "failed": [{model, dataset, task, error}], "tables", "plot",
    "clip_benchmark"}; a failed cell does not stop the run (the caller decides the exit status)."""
    if format is not None and format not in FORMATS:
        raise UsageError(f"`format` {format!r} is not one of {', '.join(FORMATS)}")
    s: Suite = load_suite(suite)
    model_list = [SuiteModel(m, m) for m in dict.fromkeys(models)] if models else list(s.models)
    if not model_list:
        raise UsageError("the suite lists no `models` and none were given: name at least one model")
    folder, _ = claim_output_dir(out, BENCHMARK_KIND, overwrite=overwrite, param="out")
    results = folder / RESULTS
    done = _finished(results)
    _end_torn_line(results)
    loaded, built = _Models(device, s.settings["precision"]), {}
    columns = _columns(s.cells)
    ran = skipped = 0
    current, failed = [], []
    for model in model_list:
        for i, (cell, column) in enumerate(zip(s.cells, columns)):
            key = cell_key(model, cell, s.settings)
            tag = {"cell": key, "suite": s.name, "column": column, "cell_run": uuid.uuid4().hex[:12]}
            if key in done and all(r.get("status") == "ok" for r in done[key]):
                skipped += 1
                current += [(model, column, r) for r in done[key]]
                continue
            ran += 1
            try:
                data = folder / "data"
                dataset = resolve_demo_paths(cell.dataset, data, f"cells[{i}].dataset", built)
                image_root = resolve_demo_paths(cell.image_root, data, f"cells[{i}].image_root", built)
                options = {k: resolve_demo_paths(v, data, f"cells[{i}].options.{k}", built) if isinstance(v, str)
                           else v for k, v in cell.options.items()}
                encoder = loaded.get(model.ref)
                rec = run_eval(encoder, cell.task, dataset, model_name=model.name, split=cell.split,
                               image_root=image_root, seed=s.settings["seed"], batch_size=s.settings["batch_size"],
                               workers=s.settings["workers"], precision=s.settings["precision"],
                               progress=progress, **options)
                recs = [{**r, **tag, "status": "ok"} for r in rec.get("records", [rec])]
            except Exception as e:  # noqa: BLE001 - one bad cell is recorded and the run goes on
                error = _error_line(e)
                log.warning("cell %s | %s | %s failed: %s", model.name, cell.dataset, cell.task, error)
                recs = [make_record(model.name, cell.dataset, cell.task, {}, config={"options": cell.options},
                                    **tag, status="failed", error=error)]
                failed.append({"model": model.name, "dataset": cell.dataset, "task": cell.task, "error": error})
            recs = [{**r, "cell_part": [j, len(recs)]} for j, r in enumerate(recs)]
            append_results(results, recs)
            if recs[0]["status"] == "ok":
                current += [(model, column, r) for r in recs]
    rows = [{"model": m.name, "dataset": column, "task": r["task"], "metrics": r["metrics"]}
            for m, column, r in current]
    notes = [f"{f['model']} | {f['dataset']} | {f['task']}: {f['error']}" for f in failed]
    tables = write_tables(folder, s.name, rows, notes)
    plot = plot_ranks(rows, folder / "ranks.png")
    cb = []
    if format == "clip_benchmark":
        cb = write_clip_benchmark([clip_benchmark_result(r, dataset=column, model=m.name, pretrained=m.ref)
                                   for m, column, r in current], folder / "clip_benchmark")
    return {"out": str(folder), "results": str(results), "ran": ran, "skipped": skipped, "failed": failed,
            "tables": [str(p) for p in tables], "plot": None if plot is None else str(plot),
            "clip_benchmark": [str(p) for p in cb]}
