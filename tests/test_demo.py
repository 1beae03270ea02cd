"""The README's main job, end to end, in its quick form."""
import json

import pytest

from clipforge.cli import main


@pytest.mark.slow
def test_demo_quick_runs_every_phase(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quick"]) == 0
    out = capsys.readouterr().out
    for phase in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "clipforge serve"):
        assert phase in out
    root = tmp_path / "demo"
    for f in ("runs/digits/final/model.safetensors", "runs/digits/curves.png", "results.jsonl", "report.md",
              "sheet-coffee.png", "index-photos", "demo-summary.json"):
        assert (root / f).exists(), f
    rec = json.loads((root / "results.jsonl").read_text().splitlines()[0])
    assert rec["task"] == "zeroshot-classification" and 0.0 <= rec["metrics"]["top1"] <= 1.0
    assert "FAISS" not in out and "swigfaiss" not in out
