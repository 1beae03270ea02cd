"""A benchmark suite: which models run which (dataset, task, options) cells, read from YAML and checked once.

    name: demo                      # optional; shown in the tables
    models:                         # references `load_model` accepts, optionally with a display name
      - tiny
      - {ref: runs/digits/final, name: digits}
    settings: {batch_size: 128, seed: 0, workers: 0, precision: fp32}   # optional, every key optional
    cells:
      - dataset: imagefolder:{digits.val_dir}   # any `clipforge eval` dataset; {demo.key}: `suite_data`
        task: zeroshot-classification
        options: {templates: photo}             # the task's own options (`TASKS.options(task)`)
        name: digits                            # optional: the table's column (default: from the dataset)
        split: test                             # optional, as `run_eval`
        image_root: /data/images                # optional, as `run_eval`

Every problem is one `UsageError` line naming the key (`cells[2].task`, `models[0].ref`, `settings.seed`);
a key the suite does not know is an error, never ignored. The file is bounded (`MAX_SUITE_BYTES`) and may not
use YAML aliases (a suite needs none, and they are how a small file expands without bound). Suites shipped
inside the package (`packaged_suites()`) are named without a path: `load_suite("demo")`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from clipforge.errors import UsageError
from clipforge.evaluate.tasks import TASKS

__all__ = ["Suite", "SuiteModel", "SuiteCell", "load_suite", "packaged_suites", "MAX_SUITE_BYTES"]

MAX_SUITE_BYTES = 1 << 20
_TOP = ("name", "models", "settings", "cells")
_CELL = ("dataset", "task", "options", "name", "split", "image_root")
_MODEL = ("ref", "name")
SETTINGS = {"batch_size": (int, 256), "workers": (int, 0), "seed": (int, 0), "precision": (str, "fp32")}


@dataclass(frozen=True)
class SuiteModel:
    ref: str
    name: str


@dataclass(frozen=True)
class SuiteCell:
    dataset: str  # as written (demo placeholders unresolved): part of the cell's identity
    task: str
    options: dict = field(default_factory=dict)  # as given; the task's defaults are filled at run time
    name: Optional[str] = None
    split: Optional[str] = None
    image_root: Optional[str] = None


@dataclass(frozen=True)
class Suite:
    name: str
    models: tuple
    cells: tuple
    settings: dict


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed in a suite", mark)
        return super().compose_node(parent, index)


def packaged_suites() -> list[str]:
    """Names of the suites shipped inside the package."""
    folder = resources.files("clipforge").joinpath("configs").joinpath("suites")
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))


def _read(suite) -> tuple[str, str]:
    p = Path(suite)
    if p.is_file():
        if p.stat().st_size > MAX_SUITE_BYTES:
            raise UsageError(f"suite {p} is over {MAX_SUITE_BYTES >> 20} MB: not a benchmark suite")
        try:
            return p.read_text(encoding="utf-8"), p.stem
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read suite {p}: {e}") from None
    if str(suite) in packaged_suites():
        folder = resources.files("clipforge").joinpath("configs").joinpath("suites")
        return folder.joinpath(f"{suite}.yaml").read_text(encoding="utf-8"), str(suite)
    raise UsageError(f"`suite` {str(suite)!r}: no such file, nor a packaged suite ({', '.join(packaged_suites())})")


def _mapping(value, where: str, allowed) -> dict:
    if not isinstance(value, dict):
        raise UsageError(f"`{where or 'suite'}` must be a mapping (got {type(value).__name__})")
    for k in value:
        if k not in allowed:
            raise UsageError(f"`{where + '.' if where else ''}{k}` is not a suite key (valid: {', '.join(allowed)})")
    return value


def _text(value, where: str, required: bool = True) -> Optional[str]:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"`{where}` must be a non-empty string (got {value!r})")
    return value


def _model(value, i: int) -> SuiteModel:
    if isinstance(value, str):
        return SuiteModel(_text(value, f"models[{i}]"), value)
    m = _mapping(value, f"models[{i}]", _MODEL)
    ref = _text(m.get("ref"), f"models[{i}].ref")
    return SuiteModel(ref, _text(m.get("name"), f"models[{i}].name", required=False) or ref)


def _option_value(opt, value, where: str):
    if isinstance(value, str) and opt.type in (int, float):
        try:
            return opt.type(value)
        except ValueError:
            raise UsageError(f"`{where}` must be {opt.type.__name__} (got {value!r})") from None
    if opt.type is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if opt.type in (int, float, str, bool) and not isinstance(value, opt.type) or (
            opt.type is int and isinstance(value, bool)):
        raise UsageError(f"`{where}` must be {opt.type.__name__} (got {value!r})")
    return value


def _cell(value, i: int) -> SuiteCell:
    c = _mapping(value, f"cells[{i}]", _CELL)
    dataset = _text(c.get("dataset"), f"cells[{i}].dataset")
    task = _text(c.get("task"), f"cells[{i}].task")
    if task not in TASKS:
        raise UsageError(f"`cells[{i}].task` {task!r} is unknown; the registered eval tasks are "
                         f"{', '.join(TASKS.names())}")
    given = c.get("options") or {}
    if not isinstance(given, dict):
        raise UsageError(f"`cells[{i}].options` must be a mapping of the task's options")
    declared = {o.name: o for o in TASKS.options(task)}
    options = {}
    for k, v in given.items():
        if k not in declared:
            raise UsageError(f"`cells[{i}].options.{k}` does not apply to task {task} (its options: "
                             f"{', '.join(declared) or 'none'})")
        options[k] = _option_value(declared[k], v, f"cells[{i}].options.{k}")
    try:
        TASKS.check(task, options)
    except UsageError as e:
        raise UsageError(f"`cells[{i}].options`: {e}") from None
    return SuiteCell(dataset, task, options, _text(c.get("name"), f"cells[{i}].name", required=False),
                     _text(c.get("split"), f"cells[{i}].split", required=False),
                     _text(c.get("image_root"), f"cells[{i}].image_root", required=False))


def _settings(value) -> dict:
    s = _mapping(value or {}, "settings", tuple(SETTINGS))
    out = {}
    for k, (typ, default) in SETTINGS.items():
        v = s.get(k, default)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise UsageError(f"`settings.{k}` must be {typ.__name__} (got {v!r})")
        out[k] = v
    if out["batch_size"] < 1 or out["workers"] < 0:
        raise UsageError("`settings.batch_size` must be >= 1 and `settings.workers` >= 0")
    return out


def suite_from_dict(d: Any, name: str = "suite") -> Suite:
    """A checked `Suite` from a parsed mapping (see the module docstring)."""
    d = _mapping(d, "", _TOP)
    models = d.get("models") or []
    cells = d.get("cells")
    if not isinstance(models, list):
        raise UsageError("`models` must be a list of model references")
    if not isinstance(cells, list) or not cells:
        raise UsageError("`cells` must be a non-empty list of {dataset, task, options}")
    ms = tuple(_model(m, i) for i, m in enumerate(models))
    for kind, values in (("ref", [m.ref for m in ms]), ("name", [m.name for m in ms])):
        dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if dup is not None:
            raise UsageError(f"`models`: {kind} {dup!r} is listed twice")
    return Suite(_text(d.get("name"), "name", required=False) or name, ms,
                 tuple(_cell(c, i) for i, c in enumerate(cells)), _settings(d.get("settings")))


def load_suite(suite) -> Suite:
    """A checked `Suite` from a YAML file, a packaged suite's name, a mapping, or a `Suite` (returned as is)."""
    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, dict):
        return suite_from_dict(suite)
    text, stem = _read(suite)
    try:
        d = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())[:200]
        raise UsageError(f"suite {suite} is not valid YAML ({problem}{where})") from None
    if not isinstance(d, dict):
        raise UsageError(f"suite {suite}: must be a mapping with `models` and `cells`")
    try:
        return suite_from_dict(d, stem)
    except UsageError as e:
        raise UsageError(f"suite {suite}: {e}") from None


_SAFE = re.compile(r"[^A-Za-z0-9@._+-]+")


def slug(text: str) -> str:
    """A file-name-safe form of a name (tables, CLIP_benchmark files)."""
    return _SAFE.sub("_", str(text)).strip("_") or "_"
