"""`clipforge benchmark` / `run_benchmark`: two models in one command -> tables, rank plot, CLIP_benchmark files;
resumable (a rerun runs only unfinished cells, counted); a failing cell is recorded and the run goes on; bad
suite keys are one-line errors naming the key."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from clipforge.cli import main
from clipforge.errors import UsageError
from clipforge.evaluate import suite as suite_mod
from clipforge.evaluate.clip_benchmark_format import clip_benchmark_file_name
from clipforge.evaluate.suite import run_benchmark
from clipforge.evaluate.suite_data import resolve_demo_paths
from clipforge.evaluate.suite_file import load_suite, packaged_suites

REAL_RUN_EVAL = suite_mod.run_eval
GOLDEN = Path(__file__).parent / "golden" / "clip_benchmark_output.json"


@pytest.fixture(scope="module")
def small_set(digits_demo, tmp_path_factory):
    """An image folder of 3 held-out digits per class (30 images) with the demo's class names."""
    root = tmp_path_factory.mktemp("small") / "val"
    val = Path(digits_demo["val_dir"])
    for d in sorted(p for p in val.iterdir() if p.is_dir()):
        (root / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:3]:
            shutil.copy(f, root / d.name / f.name)
    shutil.copy(val / "classnames.txt", root / "classnames.txt")
    return f"imagefolder:{root}"


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    return [tiny_checkpoint(0), tiny_checkpoint(1)]


def _suite(tmp_path, cells, name="s.yaml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"name": "small", "settings": {"batch_size": 64}, "cells": cells}))
    return str(p)


def _cells(ds):
    return [{"name": "digits", "dataset": ds, "task": "zeroshot-classification"},
            {"name": "digits", "dataset": ds, "task": "clustering", "options": {"cluster_seeds": "0"}}]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_two_models_one_command_table_plot_and_clip_benchmark_files(small_set, models, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", _suite(tmp_path, _cells(small_set)), "-m", models[0], "-m", models[1], "--out", str(out),
            "--format", "clip_benchmark"]
    assert main(argv) == 0, capsys.readouterr().err
    recs = _lines(out / "results.jsonl")
    assert sorted((r["model"], r["task"]) for r in recs) == sorted((m, t) for m in models for t in
                                                                   ("zeroshot-classification", "clustering"))
    assert all(r["status"] == "ok" and len(r["cell"]) == 16 for r in recs)
    with open(out / "tables" / "zeroshot-classification.top1.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["model", "digits"] and [r[0] for r in rows[1:]] == models
    top1 = {r["model"]: r["metrics"]["top1"] for r in recs if r["task"] == "zeroshot-classification"}
    assert [float(r[1]) for r in rows[1:]] == [top1[m] for m in models]
    md = (out / "tables.md").read_text()
    assert "## clustering" in md and "### nmi" in md and "mean rank" in md and all(m in md for m in models)
    assert (out / "ranks.png").read_bytes()[:4] == b"\x89PNG"
    # CLIP_benchmark's result files: its keys, its metric names, its file naming
    golden = json.loads(GOLDEN.read_text())["files"]
    want = next(v for v in golden.values() if v["task"] == "zeroshot_classification")
    assert all(clip_benchmark_file_name(v) == k for k, v in golden.items())
    files = sorted((out / "clip_benchmark").glob("*.json"))
    assert len(files) == 4
    for f in files:
        got = json.loads(f.read_text())
        assert set(got) == set(want) and clip_benchmark_file_name(got) == f.name
        if got["task"] == "zeroshot_classification":
            assert set(got["metrics"]) == set(want["metrics"])
            assert got["metrics"]["acc1"] == top1[got["model"]]


def test_a_failing_cell_is_recorded_and_the_run_goes_on(small_set, models, tmp_path, capsys):
    out = tmp_path / "bench"
    cells = [{"dataset": str(tmp_path / "missing"), "task": "zeroshot-classification"}, _cells(small_set)[0]]
    rc = main(["benchmark", _suite(tmp_path, cells), "-m", models[0], "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "failed:" in err and "Traceback" not in err
    recs = _lines(out / "results.jsonl")
    assert [r["status"] for r in recs] == ["failed", "ok"] and recs[0]["error"] and recs[0]["metrics"] == {}
    assert "## Failed cells" in (out / "tables.md").read_text()


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: the runner does not record it as a failure)."""


def _counting(monkeypatch, stop_after=None):
    calls = []
    real = REAL_RUN_EVAL

    def counted(*a, **kw):
        if stop_after is not None and len(calls) == stop_after:
            raise Killed  # killed in the middle of a cell: nothing of it is recorded
        calls.append((kw.get("model_name"), a[1]))
        return real(*a, **kw)

    monkeypatch.setattr(suite_mod, "run_eval", counted)
    return calls


def test_resumable_a_rerun_runs_only_unfinished_cells(small_set, models, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    suite = _suite(tmp_path, _cells(small_set))
    _counting(monkeypatch, stop_after=3)
    with pytest.raises(Killed):
        run_benchmark(suite, models=models, out=out)
    assert len(_lines(out / "results.jsonl")) == 3
    with open(out / "results.jsonl", "a") as f:
        f.write('{"model": "torn')  # a crash while appending: a torn last line
    calls = _counting(monkeypatch)
    summary = run_benchmark(suite, models=models, out=out)
    assert calls == [(models[1], "clustering")] and summary["ran"] == 1 and summary["skipped"] == 3
    calls = _counting(monkeypatch)
    assert run_benchmark(suite, models=models, out=out)["ran"] == 0 and calls == []
    recs = [r for r in _lines_lenient(out / "results.jsonl")]
    assert len(recs) == 4 and len({r["cell"] for r in recs}) == 4  # no duplicates
    # a changed suite: only its new cell runs, for each model
    cells = _cells(small_set) + [{"name": "digits", "dataset": small_set, "task": "clustering",
                                  "options": {"cluster_seeds": "1"}}]
    calls = _counting(monkeypatch)
    run_benchmark(_suite(tmp_path, cells), models=models, out=out)
    assert sorted(calls) == sorted((m, "clustering") for m in models)


def _lines_lenient(path: Path) -> list[dict]:
    out = []
    for x in path.read_text().splitlines():
        try:
            out.append(json.loads(x))
        except ValueError:
            pass
    return out


@pytest.mark.parametrize("suite, key", [
    ({"cells": [{"dataset": "x", "task": "zeroshot-classification"}], "modles": []}, "`modles`"),
    ({"cells": [{"dataset": "x", "taks": "clustering"}]}, "`cells[0].taks`"),
    ({"cells": [{"dataset": "x", "task": "clustring"}]}, "`cells[0].task`"),
    ({"cells": [{"dataset": "x", "task": "clustering", "options": {"k_shot": 4}}]}, "`cells[0].options.k_shot`"),
    ({"cells": [{"dataset": "x", "task": "linear-probe", "options": {"k_shot": "four"}}]},
     "`cells[0].options.k_shot`"),
    ({"cells": [{"task": "clustering"}]}, "`cells[0].dataset`"),
    ({"models": [{"name": "a"}], "cells": [{"dataset": "x", "task": "clustering"}]}, "`models[0].ref`"),
    ({"settings": {"seed": "zero"}, "cells": [{"dataset": "x", "task": "clustering"}]}, "`settings.seed`"),
    ({"cells": []}, "`cells`"),
])
def test_bad_suite_keys_are_one_line_errors_naming_the_key(suite, key, tmp_path, capsys):
    with pytest.raises(UsageError) as e:
        load_suite(suite)
    assert key in str(e.value) and "\n" not in str(e.value)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["benchmark", str(path), "-m", "tiny", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_yaml_aliases_are_refused(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("x: &a {dataset: d, task: clustering}\ncells: [*a]\n")
    with pytest.raises(UsageError, match="aliases"):
        load_suite(str(p))


def test_the_packaged_demo_suite_and_demo_paths(tmp_path):
    assert "demo" in packaged_suites()
    s = load_suite("demo")
    assert len(s.models) == 2 and {c.task for c in s.cells} >= {"zeroshot-classification", "zeroshot-retrieval",
                                                                 "linear-probe", "clustering",
                                                                 "image-caption-selection"}
    neg = resolve_demo_paths("{photos.negatives}", tmp_path / "data")
    first = json.loads(Path(neg).read_text().splitlines()[0])
    assert {"image", "positive", "negatives", "type"} <= set(first) and Path(first["image"]).is_file()
    with pytest.raises(UsageError, match="`dataset`: demo set photos has no path 'val_dir'"):
        resolve_demo_paths("jsonl:{photos.val_dir}", tmp_path / "data")


@pytest.mark.slow
def test_the_demo_suite_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["benchmark", "demo", "--out", str(out), "--format", "clip_benchmark"]) == 0, capsys.readouterr().err
    recs = _lines(out / "results.jsonl")
    assert len(recs) == 2 * len(load_suite("demo").cells) and all(r["status"] == "ok" for r in recs)
    assert main(["benchmark", "demo", "--out", str(out)]) == 0
    assert len(_lines(out / "results.jsonl")) == len(recs)  # nothing re-run
