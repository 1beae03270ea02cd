"""One memory budget for every hostile input (reliability issue): `data check`, `index build`, `curate score`,
`train` and `search --image` each run in a child process on collections holding sparse 1 GiB tar members (plain
and gzip-compressed), a 100 MB caption, a 3 MB caption sidecar and a 9400 x 9400 16-bit PNG (172 KB on disk,
2.5 GB in the old decoder), and each child's peak resident set (VmHWM) stays under 1.5 GB — torch and the model
included. Every command also finishes (exit 0) and still uses the good samples around the hostile ones."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_fixtures import encode, pattern
from hostile_files import make_big_member_shard, make_huge_caption_sources
from hostile_images import png16_near_limit

BUDGET = 1536 * 2**20
HERE = Path(__file__).parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    folder = root / "folder"
    folder.mkdir()
    for i in range(4):
        (folder / f"good{i}.png").write_bytes(encode(Image.fromarray(pattern(32, 24, seed=i)), "PNG"))
        (folder / f"good{i}.txt").write_text(f"a good picture number {i}\n")
    png16_near_limit(folder / "big16.png")
    (folder / "big16.txt").write_text("a near-limit sixteen-bit picture\n")
    (folder / "long.png").write_bytes(encode(Image.fromarray(pattern(32, 24, seed=9)), "PNG"))
    (folder / "long.txt").write_text("word " * (600 * 1024) + "\n")  # 3 MB: under the sidecar cap, then cut
    plain, plain_expect = make_big_member_shard(str(root / "wds"))
    gz, gz_expect = make_big_member_shard(str(root / "wds"), gzip=True)
    specs = make_huge_caption_sources(str(root / "captions"))
    return {"root": root, "folder": f"files:{folder}", "big16": str(folder / "big16.png"),
            "tar": f"wds:{plain}", "tar.gz": f"wds:{gz}", "parquet": specs["parquet"],
            "expect": {"tar": plain_expect, "tar.gz": gz_expect}}


def _peak(args: list[str], tmp: Path) -> tuple[int, str]:
    """(peak bytes, output) of `clipforge ARGS` in a fresh child; the command must succeed."""
    report = tmp / f"peak-{os.getpid()}-{len(list(tmp.glob('peak-*')))}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), "CLIPFORGE_PROGRESS": "0"}
    r = subprocess.run([sys.executable, str(HERE / "peak_rss.py"), str(report), "--", *args],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and report.exists(), (args, r.stderr[-3000:])
    out = json.loads(report.read_text())
    assert out["rc"] == 0, (args, r.stderr[-3000:])
    return out["hwm_bytes"], r.stdout


def _mib(n):
    return f"{n / 2**20:.0f} MiB"


@pytest.mark.parametrize("which", ["folder", "tar", "tar.gz", "parquet"])
def test_data_check(hostile, which, tmp_path):
    peak, out = _peak(["data", "check", hostile[which], "--json"], tmp_path)
    assert peak < BUDGET, _mib(peak)
    report = json.loads(out)
    if which in hostile["expect"]:
        want = hostile["expect"][which]
        assert report["num_ok"] == sum(r is None for r in want.values())
        assert report["num_bad"] == sum(r is not None for r in want.values())
    elif which == "folder":
        assert report["num_ok"] == 6 and report["num_bad"] == 0  # big16 is within every cap: it decodes
    else:
        assert report["num_ok"] == 2


@pytest.mark.parametrize("which", ["folder", "tar"])
def test_index_build_then_search_by_a_near_limit_image(hostile, which, tmp_path):
    idx = tmp_path / "idx"
    peak, _ = _peak(["index", "build", hostile[which], "--model", "tiny", "--out", str(idx), "--workers", "0"],
                    tmp_path)
    assert peak < BUDGET, _mib(peak)
    info = json.loads((idx / "index.json").read_text())
    if which == "folder":
        assert info["count"] == 6
    else:
        assert info["count"] == sum(r is None for r in hostile["expect"]["tar"].values())
        assert info["skipped"]["by_reason"].get("member_too_large") == 4
    peak, out = _peak(["search", str(idx), "--image", hostile["big16"], "-k", "3"], tmp_path)
    assert peak < BUDGET, _mib(peak)
    assert len(out.strip().splitlines()) == 1 + 3  # the header and three hits


def test_curate_score(hostile, tmp_path):
    peak, _ = _peak(["curate", "score", hostile["tar.gz"], "--model", "tiny", "--out", str(tmp_path / "s.parquet"),
                     "--workers", "0"], tmp_path)
    assert peak < BUDGET, _mib(peak)
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "s.parquet").num_rows == sum(r is None for r in hostile["expect"]["tar.gz"].values())


@pytest.mark.parametrize("which", ["folder", "parquet", "tar"])
def test_train(hostile, which, tmp_path):
    run = tmp_path / "run"
    peak, _ = _peak(["train", "--out", str(run), "--set", f"data.train={hostile[which]}", "--set", "run.steps=2",
                     "--set", "data.batch_size=2", "--set", "data.workers=0", "--set", "run.progress=false"],
                    tmp_path)
    assert peak < BUDGET, _mib(peak)
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
