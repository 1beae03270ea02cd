"""`interpolate --alphas` on several datasets (issue 33): a metric per alpha per dataset, the ends equal the two
models' own scores, a table and a chart with a line per dataset."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from clipforge.cli import main
from clipforge.errors import UsageError
from clipforge.evaluate.plots import FIGURE_KIND
from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
from clipforge.models import load_model
from clipforge.output_dirs import png_marked
from clipforge.train.wise_sweep import wise_sweep


@pytest.fixture(scope="module")
def datasets(digits_demo, tmp_path_factory):
    """Two small class folders: 6 validation digits per class as they are, and 4 training digits per class with
    their colours inverted (a shifted domain)."""
    plain, inverted = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("inverted")
    for d in range(10):
        (plain / str(d)).mkdir()
        (inverted / str(d)).mkdir()
        for p in sorted((Path(digits_demo["val_dir"]) / str(d)).glob("*.png"))[:6]:
            Image.open(p).convert("RGB").save(plain / str(d) / p.name)
        for p in sorted((Path(digits_demo["train_dir"]) / str(d)).glob("*.png"))[:4]:
            ImageOps.invert(Image.open(p).convert("RGB")).save(inverted / str(d) / p.name)
    return [f"imagefolder:{plain}", f"imagefolder:{inverted}"]


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    return tiny_checkpoint(0), tiny_checkpoint(1)


def _own(ref, ds):
    return evaluate_zeroshot_classification(load_model(ref).eval(), ds, templates="photo", progress=False)["metrics"]


def test_sweep_scores_every_alpha_on_every_dataset_and_ends_are_the_models(models, datasets, tmp_path):
    a, b = models
    res = wise_sweep(load_model(a), load_model(b), [0, 0.5, 1], datasets, templates="photo",
                     chart=tmp_path / "wise.png")
    assert sorted((r["alpha"], r["dataset"]) for r in res.rows) == sorted(
        (al, d) for al in (0.0, 0.5, 1.0) for d in datasets)
    curves = res.curves()
    for ds in datasets:
        assert curves[ds][0.0] == _own(a, ds)["top1"] and curves[ds][1.0] == _own(b, ds)["top1"]
    n = {r["dataset"]: r["n"] for r in res.rows}
    assert n[datasets[0]] == 60 and n[datasets[1]] == 40
    mean = {al: (curves[datasets[0]][al] + curves[datasets[1]][al]) / 2 for al in (0.0, 0.5, 1.0)}
    assert mean[res.best()] == max(mean.values())
    table = res.table().splitlines()
    assert len(table) == 2 + 3 and all(d in table[0] for d in datasets) and "mean" in table[0]
    assert f"{curves[datasets[1]][0.5]:.4f}" in table[3]
    assert png_marked(FIGURE_KIND)(tmp_path / "wise.png")


def test_cli_takes_several_eval_datasets(models, datasets, tmp_path, capsys):
    a, b = models
    out, chart = tmp_path / "mid", tmp_path / "wise.png"
    assert main(["interpolate", a, b, "--alphas", "0,1", "--eval-dataset", datasets[0], "--eval-dataset",
                 datasets[1], "--templates", "photo", "--chart", str(chart), "--json", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(x) for x in lines if x.startswith("{")]
    assert {(r["alpha"], r["dataset"]) for r in rows} == {(al, d) for al in (0.0, 1.0) for d in datasets}
    own = {(0.0, d): _own(a, d)["top1"] for d in datasets} | {(1.0, d): _own(b, d)["top1"] for d in datasets}
    assert all(r["top1"] == own[(r["alpha"], r["dataset"])] for r in rows)
    best = max((0.0, 1.0), key=lambda al: (sum(own[(al, d)] for d in datasets), -al))
    assert f"best alpha {best} (highest mean top1 over 2 datasets)" in lines
    kept = load_model(str(out)).state_dict()  # the checkpoint written is the chosen alpha's model
    want = load_model(a if best == 0.0 else b).state_dict()
    assert all(torch.equal(kept[k], want[k]) for k in want)
    assert chart.is_file()


def test_refused_before_any_work(models, datasets, tmp_path, capsys):
    a, b = models
    with pytest.raises(UsageError, match="twice"):
        wise_sweep(None, None, [0, 1], [datasets[0], datasets[0]])
    with pytest.raises(UsageError, match="metric"):
        wise_sweep(None, None, [0, 1], datasets, metric="top3")
    assert main(["interpolate", a, b, "--alphas", "0,1", "--eval-dataset", datasets[0], "--chart",
                 str(tmp_path / "c.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "--chart must name a .png" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["interpolate", a, b, "--eval-dataset", datasets[0], "--out", str(tmp_path / "o")]) == 2
    assert "give --alphas" in capsys.readouterr().err
