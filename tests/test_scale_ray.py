"""The Ray executor on a real local Ray cluster (2 CPUs, in this process, bound to 127.0.0.1): an index of the
photos demo built with `executor="ray"` has the same ids, keys, skips and vectors as the local build; killing
one Ray worker mid-job still gives every sample exactly once; a killed driver resumes with no duplicates or
gaps; `curate score --executor ray` writes the same scores file as the local executor. Skipped only when Ray is not installed (`pip install 'clipforge[scale]'`)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'clipforge[scale]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'clipforge[scale]'")

from clipforge.retrieval.build import build_index  # noqa: E402
from clipforge.retrieval.index_dir import read_info  # noqa: E402
from clipforge.retrieval.store import EmbeddingStore  # noqa: E402

pytestmark = pytest.mark.slow  # a Ray cluster takes 10-30 s to start on 2 busy cores

WORKER_TITLE = "MapWorker(MapBatches(_JobUnitWorker))"


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(photos_demo, tmp_path_factory):
    """The photos demo plus one corrupt image and one empty file: bad-sample accounting must match too."""
    root = tmp_path_factory.mktemp("scale") / "photos"
    shutil.copytree(photos_demo["images_dir"], root)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (root / "broken.txt").write_text("a broken image\n")
    (root / "empty.jpg").write_bytes(b"")
    return f"files:{root}", photos_demo["num_photos"]


def _rows(root, modality="img"):
    """{key: (id, float16 vector)} and the keys in store order."""
    s = EmbeddingStore.open(root)
    x, ids = s.load(modality, as_float32=False)
    meta = s.metadata(["id", "key"]).to_pylist()
    key_of = {r["id"]: r["key"] for r in meta}
    return {key_of[int(i)]: (int(i), v) for i, v in zip(ids, x)}, [r["key"] for r in meta]


def _assert_same(a, b, modalities=("img", "text")):
    for m in modalities:
        ra, order_a = _rows(a, m)
        rb, order_b = _rows(b, m)
        assert order_a == order_b and len(set(order_b)) == len(order_b)  # same rows, no duplicates
        for key, (i, v) in ra.items():
            assert rb[key][0] == i, key  # same collection id
            np.testing.assert_allclose(rb[key][1].astype(np.float32), v.astype(np.float32), atol=1e-3)


@pytest.fixture(scope="module")
def local_build(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "idx"
    build_index(photos[0], "tiny", out, batch_size=2, shard_size=4, index_kind="flat", progress=False)
    return out


def test_ray_build_equals_local(cluster, photos, local_build, tmp_path):
    out = tmp_path / "ray"
    s = build_index(photos[0], "tiny", out, batch_size=2, shard_size=4, index_kind="flat", progress=False,
                    executor="ray", executor_options={"num_workers": 2})
    assert s["count"] == photos[1] and s["executor"]["executor"] == "ray" and s["executor"]["num_workers"] == 2
    _assert_same(local_build, out)
    a, b = read_info(local_build), read_info(out)
    assert b["bad"] == a["bad"] and set(a["bad"]) == {"broken.png", "empty.jpg"}  # skips: same keys, reasons
    assert b["precision"] == a["precision"] == "fp32"
    from clipforge.retrieval.index import VectorIndex

    x, _ = EmbeddingStore.open(local_build).load()
    sa, ia = VectorIndex.load(local_build / "index.faiss").search(x[:5], 5)
    sb, ib = VectorIndex.load(out / "index.faiss").search(x[:5], 5)
    assert (ia == ib).all() and np.allclose(sa, sb, atol=1e-3)


def test_ray_webdataset_shards_equal_local(cluster, photos_demo, tmp_path):
    """Shards as the source: each unit is read from the single tar shards it lives in."""
    from clipforge.data.sources import open_source
    from clipforge.data.write import write_wds

    write_wds(open_source(f"files:{photos_demo['images_dir']}"), str(tmp_path / "wds"), shard_size=5,
              progress=False)
    outs = {}
    for ex in ("local", "ray"):
        outs[ex] = tmp_path / ex
        s = build_index(f"wds:{tmp_path / 'wds'}", "tiny", outs[ex], batch_size=2, shard_size=6,
                        index_kind="flat", progress=False, executor=ex)
        assert s["count"] == photos_demo["num_photos"]
    _assert_same(outs["local"], outs["ray"])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _ray_workers() -> list[int]:
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if WORKER_TITLE.encode() in f.read():
                    pids.append(pid)
        except OSError:
            pass
    return pids


def test_killed_worker_mid_job_no_duplicates_no_gaps(cluster, photos, local_build, tmp_path):
    killed = []

    def kill_one(progress):
        if not killed and progress["done"] < progress["total"]:
            workers = _ray_workers()
            assert workers, "no Ray map worker found to kill"
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])

    out = tmp_path / "ray-killed"
    s = build_index(photos[0], "tiny", out, batch_size=2, shard_size=4, index_kind="flat", progress=False,
                    executor="ray", executor_options={"num_workers": 2}, on_batch=kill_one)
    assert killed, "the job finished before a worker could be killed"
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{killed[0]}") or b"zombie" in open(f"/proc/{killed[0]}/status", "rb").read().lower()
    assert s["count"] == photos[1]
    _assert_same(local_build, out)  # every sample once, same ids and vectors
    assert read_info(out)["bad"] == read_info(local_build)["bad"]


_KILL_DRIVER = """
import os, signal, sys
from clipforge.retrieval.build import build_index
from clipforge.retrieval.store import EmbeddingStore
out = sys.argv[2]
def on_batch(p):  # kill -9 the driver and its Ray cluster once a shard is committed, before the last one
    if p["done"] < p["total"] and EmbeddingStore.open(out).manifest["shards"]:
        os.killpg(os.getpgid(0), signal.SIGKILL)
build_index(sys.argv[1], "tiny", out, batch_size=2, shard_size=4, index_kind="flat", workers=0, progress=False,
            executor="ray", executor_options={"num_workers": 1}, on_batch=on_batch)
"""


def test_killed_driver_resumes(photos, local_build, tmp_path):
    """An index build on Ray killed with -9 (driver, its local cluster and its workers) after its first committed
    shard; `clipforge index build --executor ray` on the same folder finishes the job: the store equals the
    uninterrupted local build. The kill point is fixed by the build's progress, not by a timer: a poll from
    outside can see the first shard only after the last one on a busy machine."""
    out = tmp_path / "resumed"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen([sys.executable, "-c", _KILL_DRIVER, photos[0], str(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert p.wait(timeout=600) == -signal.SIGKILL, "the build ended without reaching its kill point"
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # anything of its cluster still standing
        except ProcessLookupError:
            pass
    first = EmbeddingStore.open(out).manifest["shards"]
    assert first and sum(s["count"] for s in first) < photos[1]
    cmd = [sys.executable, "-m", "clipforge", "index", "build", photos[0], "-m", "tiny", "--out", str(out),
           "--batch-size", "2", "--shard-size", "4", "--index-kind", "flat", "--workers", "0", "--executor", "ray",
           "--num-workers", "1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_info(out)["last_run"]["resumed_from"] == sum(s["count"] for s in first)
    _assert_same(local_build, out)
    assert read_info(out)["bad"] == read_info(local_build)["bad"]


def test_ray_curate_score_equals_local(cluster, photos, tmp_path, capsys):
    """`clipforge curate score --executor ray`: each part scored in a Ray actor, committed here in plan order; the
    scores file has the same rows (ids, positions, captions, facts, skips) and scores as the local executor's."""
    import json

    from clipforge.cli import main
    from clipforge.curate import read_scores

    common = ["curate", "score", photos[0], "-m", "tiny", "--workers", "0", "--batch-size", "2", "--part-size", "4",
              "--precision", "fp32", "--pixel-features", "--json"]
    assert main(common + ["--out", str(tmp_path / "local.parquet")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(common + ["--out", str(tmp_path / "ray.parquet"), "--executor", "ray", "--num-workers", "2"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["executor"]["executor"] == "ray" and remote["executor"]["num_workers"] == 2
    assert remote["skipped"] == local["skipped"] and local["skipped"]["total"] >= 2
    a, b = read_scores(tmp_path / "ray.parquet"), read_scores(tmp_path / "local.parquet")
    assert a.drop(["score", "image_emb"]).to_pylist() == b.drop(["score", "image_emb"]).to_pylist()
    sa, sb = (np.array(t.column("score").to_pylist(), dtype=float) for t in (a, b))
    np.testing.assert_allclose(sa, sb, atol=1e-5)


def test_ray_data_is_quiet_unless_verbose(cluster, photos, tmp_path):
    """Ray Data's console lines (execution plans, where its logs are) appear only with clipforge's logging at
    DEBUG (the CLI's -v): a normal run prints clipforge's own summary."""
    import logging

    from clipforge.scale.ray_executor import _ray_data_console

    console = [h for h in logging.getLogger("ray.data").handlers if "File" not in type(h).__name__]
    files = [h for h in logging.getLogger("ray.data").handlers if "File" in type(h).__name__]
    assert console, "Ray Data has no console handler to quieten"
    build_index(photos[0], "tiny", tmp_path / "quiet", batch_size=8, progress=False, executor="ray",
                executor_options={"num_workers": 1})
    assert all(h.level == logging.ERROR for h in console) and all(h.level < logging.ERROR for h in files)
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    try:
        build_index(photos[0], "tiny", tmp_path / "loud", batch_size=8, progress=False, executor="ray",
                    executor_options={"num_workers": 1})
        assert all(h.level == logging.INFO for h in console)
    finally:
        root.setLevel(old)
        _ray_data_console(logging.ERROR)
