"""The bench/ convention (bench/common.py): every script takes --seeds and --json through add_common_args and
writes its raw results through write_results — checked statically, no bench is run — and the shared helpers
themselves: seeds in both spellings, mean ± sample std, the JSON beside the page."""
from __future__ import annotations

import argparse
import ast
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BENCH = ROOT / "bench"
# files under bench/ that are not bench scripts, and why
HELPERS = {
    "common.py": "the convention itself",
    "bench_report.py": "the older import path of common.publish",
    "openclip_peer_prepare.py": "a module bench_demo_learning.py imports (no entry point)",
    "openclip_peer_train.py": "a worker bench_demo_learning.py runs in open_clip's environment (never imports "
                              "clipforge); its caller records seeds and machine",
}

# scripts other helpers added while the convention landed, not yet converted (their authors' files): each is an
# expected failure until it conforms, and then a strict XPASS says to strike it from here
PENDING: dict = {}  # scripts other helpers add before they conform: an expected failure each, struck when they do

sys.path.insert(0, str(BENCH))
try:
    import common
finally:
    sys.path.remove(str(BENCH))


def scripts() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if p.name not in HELPERS)


def called_names(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return out


def own_flags(tree: ast.AST) -> set[str]:
    """Flag names a script defines itself with add_argument("--x", ...)."""
    flags = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return flags


def test_the_helper_list_names_files_that_exist():
    assert all((BENCH / name).is_file() for name in {**HELPERS, **PENDING})
    assert len(scripts()) >= 20  # the glob found the bench scripts


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=PENDING[p.name]))
                                  if p.name in PENDING else p for p in scripts()], ids=lambda p: p.name)
def test_every_bench_script_follows_the_convention(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    calls = called_names(tree)
    missing = [name for name in ("add_common_args", "write_results") if name not in calls]
    assert not missing, f"{path.name} never calls {', '.join(missing)} (bench/common.py)"
    twice = own_flags(tree) & {"--seeds", "--json"}
    assert not twice, f"{path.name} defines {sorted(twice)} itself: add_common_args gives them"


def parse(argv):
    return common.add_common_args(argparse.ArgumentParser(), seeds=(3, 4)).parse_args(argv)


def test_seeds_in_both_spellings_and_the_default():
    assert parse(["--seeds", "0", "1", "2"]).seeds == [0, 1, 2]
    assert parse(["--seeds", "0,1,2"]).seeds == [0, 1, 2]
    assert parse(["--seeds", "5,7", "9"]).seeds == [5, 7, 9]
    assert parse([]).seeds == [3, 4]
    assert parse(["--json", "x.json"]).json == "x.json"


@pytest.mark.parametrize("bad", [["--seeds", "1", "1"], ["--seeds", "a"], ["--seeds", ","]])
def test_bad_seed_lists_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        parse(bad)
    assert "--seeds" in capsys.readouterr().err


def test_summarize_is_mean_and_sample_std_with_the_seeds():
    vals, seeds = [0.61, 0.47, 0.70, 0.55], [0, 1, 2, 7]
    s = common.summarize(vals, seeds)
    assert math.isclose(s["mean"], statistics.mean(vals))
    assert math.isclose(s["std"], statistics.stdev(vals))  # ddof=1, not pstdev
    assert not math.isclose(s["std"], statistics.pstdev(vals))
    assert s["n"] == 4 and s["seeds"] == seeds and s["values"] == vals and "ddof=1" in s["std_kind"]
    assert common.fmt(s) == f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f} (seeds 0,1,2,7)"


def test_one_seed_has_no_spread_and_says_so():
    s = common.summarize([0.5], [7])
    assert s["std"] is None and s["n"] == 1
    assert common.fmt(s) == "0.500 (single seed 7)"
    with pytest.raises(ValueError):
        common.summarize([0.1, 0.2], [0])
    with pytest.raises(ValueError):
        common.summarize([])


def test_write_results_beside_the_page_with_machine_and_seeds(tmp_path, monkeypatch):
    fake = {"cpu": "test cpu", "flags": ["avx2"], "cores": 2}
    monkeypatch.setattr(common, "machine", lambda: dict(fake))
    page = tmp_path / "docs" / "bench_x.md"
    page.parent.mkdir()
    path = common.write_results(page, {"seeds": [0, 1], "top1": common.summarize([0.5, 0.7], [0, 1])})
    assert path == tmp_path / "docs" / "bench_x.json"
    data = json.loads(path.read_text())
    assert data["seeds"] == [0, 1] and data["machine"] == fake and data["top1"]["values"] == [0.5, 0.7]
    assert sorted(p.name for p in page.parent.iterdir()) == ["bench_x.json"]  # no temporary file left behind
    # an explicit --json path wins; a machine the bench measured itself is kept
    other = common.write_results(page, {"seeds": [3], "machine": {"cpu": "mine"}}, json_path=str(tmp_path / "r.json"))
    assert json.loads(other.read_text())["machine"] == {"cpu": "mine"}
    assert common.write_results(None, {"seeds": [0]}) is None


def test_write_results_refuses_a_payload_without_seeds(tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        common.write_results(tmp_path / "p.md", {"top1": 0.5})
    assert not (tmp_path / "p.json").exists()


def test_machine_records_what_speeds_depend_on():
    m = common.machine()
    for key in ("cpu", "flags", "cores", "torch", "torch_threads", "fp32_matmul_gflops", "load_avg"):
        assert key in m, key
    assert m["fp32_matmul_gflops"] > 0 and m["torch_threads"] >= 1
    assert str(m["cores"]) in common.machine_line(m)
