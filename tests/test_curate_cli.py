"""`clipforge curate score|filter|dedup|report` end to end on a small collection with planted copies and broken
files: exit codes, outputs that are sources, removals with reasons, a report with its images; bad input gets
one line naming the flag and exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipforge.cli import main
from clipforge.curate import read_removals
from clipforge.data.sources import open_source
from curate_fixtures import broken_rows, digits_rows, plant_copies, write_manifest


@pytest.fixture(scope="module")
def done(digits_demo, tmp_path_factory):
    """The four commands run once, in order, as a user would."""
    root = tmp_path_factory.mktemp("cli")
    rows = digits_rows(digits_demo, 14)
    copies = plant_copies(rows, root / "copies", kinds=("bytes", "pixels", "upscale", "jpeg"))
    spec = write_manifest(root / "pairs.jsonl", rows + copies + broken_rows(root / "broken"))
    scores = root / "scores.parquet"
    codes = {
        "score": main(["curate", "score", spec, "--model", "tiny", "--out", str(scores), "--workers", "0",
                       "--precision", "fp32", "--pixel-features", "--batch-size", "8", "--no-lang"]),
        "dedup": main(["curate", "dedup", spec, "--scores", str(scores), "--features", "pixels", "--eps", "0.02",
                       "--out", str(root / "dedup.jsonl")]),
        "filter": main(["curate", "filter", spec, "--scores", str(scores), "--keep-top", "0.8",
                        "--min-caption-chars", "5", "--remove", str(root / "dedup.removals.jsonl"),
                        "--out", str(root / "clean.jsonl")]),
    }
    codes["report"] = main(["curate", "report", str(root / "clean.summary.json"), str(root / "dedup.summary.json"),
                            "--out", str(root / "report"), "--examples", "4"])
    return {"root": root, "spec": spec, "rows": rows, "copies": copies, "codes": codes}


def test_commands_succeed_and_outputs_are_sources(done):
    assert done["codes"] == {"score": 0, "dedup": 0, "filter": 0, "report": 0}
    root = done["root"]
    n_in = len(done["rows"]) + len(done["copies"]) + 3
    for name in ("dedup", "clean"):
        src = open_source(f"jsonl:{root / (name + '.jsonl')}")
        kept = {src[i].id for i in range(len(src))}
        gone = {r["id"] for r in read_removals(root / f"{name}.removals.jsonl") if r["removed"] == "sample"}
        assert len(kept) + len(gone) == n_in and not kept & gone  # every sample kept or recorded as removed
    clean = open_source(f"jsonl:{root / 'clean.jsonl'}")
    ids = {clean[i].id for i in range(len(clean))}
    assert all(len({c["id"], c["_of"]} & ids) == 1 for c in done["copies"])  # one of each planted pair stays


def test_dedup_removes_each_planted_copy_with_its_reason(done):
    rem = {r["id"]: r for r in read_removals(done["root"] / "dedup.removals.jsonl")}
    for c in done["copies"]:  # the copy or its original goes, and names the other
        r = rem.get(c["id"]) or rem.get(c["_of"])
        assert r is not None and {r["id"], r["duplicate_of"]} == {c["id"], c["_of"]}
        want = "exact_duplicate" if c["_kind"] in ("bytes", "pixels") else "near_duplicate"
        assert r["reasons"] == [want]
    assert {i: r["reasons"] for i, r in rem.items() if not r.get("duplicate_of")} == {
        "truncated": ["unreadable:truncated"], "not-image": ["unreadable:not_an_image"]}  # unreadable: said why
    assert len(rem) == len(done["copies"]) + 2  # distinct digits are left alone


def test_report_renders_histogram_reasons_and_sheets(done):
    rep = done["root"] / "report"
    md = (rep / "report.md").read_text()
    for png in ("filter0_scores.png", "filter0_removed_near_threshold.png", "filter0_kept_near_threshold.png",
                "dedup1_least_similar.png"):
        assert f"]({png})" in md and (rep / png).stat().st_size > 1000
    summary = json.loads((done["root"] / "clean.summary.json").read_text())
    assert f"{summary['threshold']['threshold']:.4f}" in md
    for reason, count in summary["removed_by_reason"].items():
        assert f"| {reason} | {count} |" in md


@pytest.mark.parametrize("argv, needle", [
    (["filter", "{spec}", "--scores", "{scores}", "--min-score", "2", "--out", "{tmp}/x.jsonl"], "--min-score"),
    (["filter", "{spec}", "--scores", "{tmp}/nope.parquet", "--out", "{tmp}/x.jsonl"], "nope.parquet"),
    (["filter", "{spec}", "--scores", "{scores}", "--calibrate", "{scores}", "--out", "{tmp}/x.jsonl"],
     "--ref-threshold"),
    (["dedup", "{spec}", "--scores", "{scores}", "--eps", "1.5", "--out", "{tmp}/x.jsonl"], "--eps"),
    (["report", "{scores}", "--out", "{tmp}/r"], "summary"),
])
def test_bad_input_is_one_line_naming_the_flag(done, tmp_path, capsys, argv, needle):
    capsys.readouterr()
    fill = {"spec": done["spec"], "scores": str(done["root"] / "scores.parquet"), "tmp": str(tmp_path)}
    assert main(["curate"] + [a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x.jsonl").exists()


def test_score_and_dedup_take_the_executor_flags(done, tmp_path, capsys):
    """`--executor ray` and its options reach curate score / dedup's embedding step; an executor option without
    `--executor ray` is one line naming the flag, exit 2, before any work."""
    capsys.readouterr()
    spec, out = done["spec"], str(tmp_path / "s.parquet")
    assert main(["curate", "score", spec, "-m", "tiny", "--out", out, "--address", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--address does not apply to executor 'local'" in err and "ray" in err and "\n" not in err
    assert main(["curate", "dedup", spec, "-m", "tiny", "--out", str(tmp_path / "d.jsonl"),
                 "--num-gpus-per-worker", "1"]) == 2
    assert "--num-gpus-per-worker does not apply" in capsys.readouterr().err
    # every flag parses with --executor ray; the executor itself checks its values before starting Ray
    assert main(["curate", "score", spec, "-m", "tiny", "--out", out, "--executor", "ray", "--address", "auto",
                 "--num-workers", "0", "--num-cpus-per-worker", "1", "--num-gpus-per-worker", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--num-workers must be >= 1" in err and "\n" not in err
    assert not list(tmp_path.iterdir())
