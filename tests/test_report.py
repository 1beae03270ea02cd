"""Results JSONL (append, read, dedupe), the markdown report, plots, and `clipforge report`."""
import json
import math

import numpy as np

from clipforge.cli import main
from clipforge.metrics.classification import confusion_matrix
from clipforge.evaluate.plots import plot_confusion_matrix
from clipforge.evaluate.report import _panels, config_labels, markdown_report, primary_metric, short_names
from clipforge.evaluate.results import append_result, config_hash, latest_results, make_record, read_results

PNG = b"\x89PNG\r\n\x1a\n"


def _fill(path):
    append_result(path, make_record("tiny", "digits", "zeroshot-classification", {"top1": 0.5, "n": 10},
                                    config={"b": 1, "a": 2}, templates_hash="abc", elapsed_s=1.23456))
    append_result(path, make_record("tiny", "digits", "zeroshot-classification", {"top1": np.float32(0.75)},
                                    config={"a": 2, "b": 1}))  # the same configuration, run again
    append_result(path, make_record("big", "digits", "zeroshot-classification", {"top1": 0.9, "top5": 1.0},
                                    config={"a": 2, "b": 1}))
    append_result(path, make_record("tiny", "flickr", "zeroshot-retrieval",
                                    {"i2t_R@1": 0.4, "t2i_R@1": 0.2, "bad": float("nan"),
                                     "per_query": {"ap": np.zeros(3)}}))


def test_records_roundtrip_and_dedupe(tmp_path):
    path = tmp_path / "r" / "results.jsonl"
    _fill(path)
    with open(path, "a") as f:
        f.write('{"truncated": \n')  # a crashed writer's partial line is skipped
    recs = read_results(path)
    assert len(recs) == 4
    first = recs[0]
    assert first["config_hash"] == config_hash({"a": 2, "b": 1}) and first["templates_hash"] == "abc"
    assert first["elapsed_s"] == 1.235 and "torch" in first["versions"] and first["time"].endswith("+00:00")
    assert recs[1]["metrics"]["top1"] == 0.75 and recs[3]["metrics"]["bad"] is None
    assert "per_query" not in recs[3]["metrics"]
    latest = latest_results(recs)
    assert len(latest) == 3 and latest[0]["metrics"]["top1"] == 0.75
    for line in path.read_text().splitlines()[:4]:
        json.loads(line)  # every complete line is valid JSON (no NaN literal)


def test_records_are_kept_per_full_configuration(tmp_path):
    """A 4-shot probe must not replace the full-data probe of the same model on the same dataset."""
    path = tmp_path / "results.jsonl"
    full = {"task": "linear-probe", "k_shot": None, "seed": 0}
    for cfg, top1 in ((full, 0.6), ({**full, "k_shot": 4}, 0.3), (full, 0.62)):
        append_result(path, make_record("/runs/a/final", "imagefolder:/data/digits/val", "linear-probe",
                                        {"top1": top1}, config=cfg))
    latest = latest_results(read_results(path))
    assert [r["metrics"]["top1"] for r in latest] == [0.62, 0.3]  # the rerun replaced its own configuration
    assert config_labels(latest) == ["a [k_shot=—]", "a [k_shot=4]"]  # the run, not its `final`
    md = markdown_report(read_results(path))
    assert "| a [k_shot=—] | 0.6200 |" in md and "| a [k_shot=4] | 0.3000 |" in md
    # the chart names the run too, never the absolute path
    panels = _panels(latest)
    assert panels == {"linear-probe (top1)": {"val": {"a [k_shot=—]": 0.62, "a [k_shot=4]": 0.3}}}


def test_short_names_are_unique_tails():
    names = ["/home/u/runs/digits/final", "/home/u/runs/photos/final", "tiny", "hf:openai/clip-vit-b32",
             "imagefolder:/data/digits/val"]
    assert short_names(names) == {"/home/u/runs/digits/final": "digits/final",
                                  "/home/u/runs/photos/final": "photos/final", "tiny": "tiny",
                                  "hf:openai/clip-vit-b32": "clip-vit-b32", "imagefolder:/data/digits/val": "val"}


def test_markdown_report(tmp_path):
    path = tmp_path / "results.jsonl"
    _fill(path)
    md = markdown_report(read_results(path), chart_name="report.png")
    assert "## zeroshot-classification — top1" in md and "![comparison](report.png)" in md
    assert "| tiny | 0.7500 |" in md and "| big | 0.9000 |" in md  # latest tiny run, not 0.5
    assert "## zeroshot-retrieval — mean R@1" in md and "| tiny | 0.3000 |" in md
    assert primary_metric({"metrics": {"n": 3, "AP@50": 0.1}}) == ("AP@50", 0.1)


def test_cli_report(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    _fill(path)
    assert main(["report", str(path)]) == 0
    assert "# clipforge results" in capsys.readouterr().out
    out = tmp_path / "out" / "report.md"
    assert main(["report", str(path), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!-- clipforge evaluation report -->\n# clipforge results")
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == PNG
    assert "![comparison](report.png)" in out.read_text()
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(path), "--chart", "x.jpg"]) == 2


def test_confusion_png(tmp_path):
    cm = confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3)
    p = plot_confusion_matrix(cm, tmp_path / "cm.png", ["a", "b", "c"])
    assert p.read_bytes()[:8] == PNG
    assert not math.isnan(cm.sum())
