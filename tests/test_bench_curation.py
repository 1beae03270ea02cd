"""The curation bench's smallest setting runs end to end, its parallel training in spawned processes, within a
time limit (it once hung for 43 minutes in a forked worker), and a stuck run is an error, not a wait."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BENCH = ROOT / "bench" / "bench_curation.py"


@pytest.mark.slow
def test_smallest_setting_runs_end_to_end_with_parallel_training(tmp_path):
    page = tmp_path / "page.md"
    r = subprocess.run([sys.executable, str(BENCH), "--work", str(tmp_path / "w"), "--steps", "3", "--score-steps",
                        "3", "--seeds", "0", "--parallel", "2", "--job-timeout", "600", "--out", str(page)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = page.read_text()
    assert "## De-duplication (planted copies)" in text and "## Training on raw vs curated data" in text
    assert (tmp_path / "w" / "runs" / "raw-0" / "summary.json").is_file()
    assert (tmp_path / "w" / "runs" / "curated-0" / "summary.json").is_file()


def test_a_stuck_training_run_is_an_error_not_a_wait(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_curation
    finally:
        sys.path.remove(str(ROOT / "bench"))
    # a job that never returns, in a spawned worker: time.sleep stands in for a deadlocked training run
    monkeypatch.setattr(bench_curation, "train_run", __import__("time").sleep)
    with pytest.raises(SystemExit, match="gave no result in 2 s"):
        list(bench_curation.run_jobs([("raw", (60,)), ("raw", (60,))], parallel=2, timeout=2))
