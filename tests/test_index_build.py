"""Index build jobs: stored vectors equal direct model encoding, bad files counted, kill -9 + resume equals an
uninterrupted build, update after add/change/delete equals a fresh build, precision and faiss choices recorded."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.errors import UsageError
from clipforge.retrieval.build import build_index, update_index
from clipforge.retrieval.faiss_build import parse_size
from clipforge.retrieval.index_dir import read_info
from clipforge.encode import Encoder, resolve_precision
from clipforge.retrieval.store import EmbeddingStore


def _by_key(root, modality="img"):
    s = EmbeddingStore.open(root)
    x, ids = s.load(modality)
    keys = s.metadata(["id", "key"])
    key_of = dict(zip(keys.column("id").to_pylist(), keys.column("key").to_pylist()))
    return {key_of[int(i)]: (int(i), v) for i, v in zip(ids, x)}


def _copy_photos(photos_demo, dst, n=None):
    src = photos_demo["images_dir"]
    os.makedirs(dst)
    names = sorted(f for f in os.listdir(src) if f.endswith(".png"))[:n]
    for f in names:
        shutil.copy2(os.path.join(src, f), dst)
        shutil.copy2(os.path.join(src, f[:-4] + ".txt"), dst)
    return names


@pytest.fixture(scope="module")
def built(photos_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "photos"
    summary = build_index(f"files:{photos_demo['images_dir']}", "tiny", out, batch_size=4, shard_size=8,
                          progress=False)
    return out, summary


def test_vectors_equal_direct_encoding(built, photos_demo):
    out, summary = built
    assert summary["count"] == summary["embedded"] == photos_demo["num_photos"]
    rows = _by_key(out)
    enc = Encoder.load("tiny")  # same fixed-seed init as the job
    model = enc.model
    assert enc.precision == "fp32"
    for key in ("astronaut.png", "coffee.png", "rocket.png"):
        img = Image.open(os.path.join(photos_demo["images_dir"], key)).convert("RGB")
        with torch.no_grad():
            want = model.encode_image(model.preprocess(img)[None])[0].numpy()
        np.testing.assert_allclose(rows[key][1], want, atol=2e-3)  # float16 storage
    # captions -> text_emb/, aligned with the image rows
    txt = _by_key(out, "text")
    with torch.no_grad():
        want = model.encode_text(model.tokenizer(["a cup of coffee on a saucer with a spoon"]))[0].numpy()
    np.testing.assert_allclose(txt["coffee.png"][1], want, atol=2e-3)
    assert txt["coffee.png"][0] == rows["coffee.png"][0]
    info = read_info(out)
    assert info["status"] == "complete" and info["text"] is True and info["precision"] == "fp32"
    assert info["index"]["kind"] == "flat" and info["count"] == photos_demo["num_photos"]
    assert (out / "index.faiss").exists() and len(list((out / "img_emb").glob("*.npy"))) == 3  # 22 / 8


def test_bad_files_counted_not_fatal(photos_demo, tmp_path):
    d = tmp_path / "imgs"
    _copy_photos(photos_demo, d, n=3)
    (d / "empty.png").write_bytes(b"")
    (d / "junk.jpg").write_bytes(b"this is not a jpeg at all")
    good = Image.open(d / sorted(os.listdir(d))[0]).convert("RGB")
    good.save(d / "cut.jpg", quality=90)
    data = (d / "cut.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 3])
    s = build_index(f"files:{d}", "tiny", tmp_path / "idx", batch_size=2, shard_size=4, progress=False)
    assert s["count"] == 3
    assert s["skipped"]["total"] == 3
    assert s["skipped"]["by_reason"]["empty_file"] == 1 and s["skipped"]["by_reason"]["not_an_image"] == 1
    info = read_info(tmp_path / "idx")
    assert set(info["bad"]) == {"empty.png", "junk.jpg", "cut.jpg"}
    # a rerun does not retry known-bad files and adds nothing
    s2 = build_index(f"files:{d}", "tiny", tmp_path / "idx", progress=False)
    assert s2["embedded"] == 0 and s2["skipped_this_run"] == 0 and s2["count"] == 3


_KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from clipforge.retrieval.build import build_index
    manifest = Path(sys.argv[2]) / "manifest.json"
    def on_batch(info):  # kill -9 ourselves mid-way through a shard, once one shard is committed
        if info["done"] % 4 and manifest.exists() and json.loads(manifest.read_text())["shards"]:
            os.kill(os.getpid(), signal.SIGKILL)
    build_index(sys.argv[1], "tiny", sys.argv[2], batch_size=2, shard_size=4, workers=int(sys.argv[3]),
                progress=False, on_batch=on_batch)
""")


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(photos_demo, tmp_path):
    spec = f"files:{photos_demo['images_dir']}"
    ref = tmp_path / "ref"
    build_index(spec, "tiny", ref, batch_size=2, shard_size=4, progress=False)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, spec, str(killed), "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The child kills itself at a point fixed by its progress, not by a timer: on a busy machine a timer
    # can fire before the first shard is committed (or after the last) and fail the test for no fault of the code.
    assert proc.wait(timeout=600) == -signal.SIGKILL
    n_before = len(EmbeddingStore.open(killed))
    assert 0 < n_before < photos_demo["num_photos"], "the kill should land in the middle of the build"
    s = build_index(spec, "tiny", killed, batch_size=2, shard_size=4, progress=False)
    assert s["resumed_from"] == n_before and s["embedded"] == photos_demo["num_photos"] - n_before
    a, b = _by_key(ref), _by_key(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0], k  # same ids
        np.testing.assert_array_equal(a[k][1], b[k][1])  # same vectors
    ids = EmbeddingStore.open(killed).load()[1]
    assert len(np.unique(ids)) == len(ids) == photos_demo["num_photos"]  # no duplicates, no gaps


def test_update_matches_fresh_build(photos_demo, tmp_path):
    d = tmp_path / "imgs"
    names = _copy_photos(photos_demo, d, n=8)
    idx = tmp_path / "idx"
    build_index(f"files:{d}", "tiny", idx, batch_size=4, shard_size=4, progress=False)
    before = _by_key(idx)
    # delete one, change one image (flip), change one caption, add two new files
    os.remove(d / names[0])
    os.remove(d / (names[0][:-4] + ".txt"))
    img = Image.open(d / names[1])
    img.transpose(Image.FLIP_LEFT_RIGHT).save(d / names[1])
    os.utime(d / names[1], (time.time() + 5, time.time() + 5))
    (d / (names[2][:-4] + ".txt")).write_text("a completely different caption\n")
    extras = [f for f in sorted(os.listdir(photos_demo["images_dir"])) if f.endswith(".png") and f not in names]
    for extra in extras[:2]:
        shutil.copy2(os.path.join(photos_demo["images_dir"], extra), d)
    s = update_index(idx, progress=False)
    assert (s["added"], s["changed"], s["deleted"]) == (2, 2, 1)
    fresh = tmp_path / "fresh"
    build_index(f"files:{d}", "tiny", fresh, batch_size=4, shard_size=4, progress=False)
    got, want = _by_key(idx), _by_key(fresh)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k][1], want[k][1], atol=2e-3, err_msg=k)
    for k in (names[1], names[2], *names[3:]):  # kept and changed files keep their ids
        assert got[k][0] == before[k][0]
    new = [k for k in got if k not in before]
    assert len(new) == 2 and min(got[k][0] for k in new) > max(v[0] for v in before.values())
    t_got, t_want = _by_key(idx, "text"), _by_key(fresh, "text")
    np.testing.assert_allclose(t_got[names[2]][1], t_want[names[2]][1], atol=2e-3)
    assert not np.allclose(t_got[names[2]][1], _by_key(idx, "text")[names[3]][1])
    # the faiss index follows the store: deleted ids are gone
    from clipforge.retrieval.index import VectorIndex

    vi = VectorIndex.load(idx / "index.faiss")
    assert len(vi) == len(got) and before[names[0]][0] not in set(vi.search(got[names[1]][1][None], 20)[1][0])
    # nothing changed -> nothing embedded
    assert update_index(idx, progress=False)["embedded"] == 0


def test_bf16_precision_recorded_and_close(photos_demo, tmp_path):
    spec = f"files:{photos_demo['images_dir']}"
    build_index(spec, "tiny", tmp_path / "bf", precision="bf16", batch_size=8, progress=False, text=False)
    info = read_info(tmp_path / "bf")
    assert info["precision"] == "bf16" and info["text"] is False
    assert not (tmp_path / "bf" / "text_emb").exists()
    build_index(spec, "tiny", tmp_path / "fp", precision="fp32", batch_size=8, progress=False, text=False)
    a, b = _by_key(tmp_path / "bf"), _by_key(tmp_path / "fp")
    cos = [float(a[k][1] @ b[k][1]) for k in a]
    assert min(cos) > 0.98
    # auto: the tiny model stays fp32 on CPU (too small for bf16 to pay)
    assert resolve_precision("auto", torch.nn.Linear(4, 4), torch.device("cpu")) == "fp32"
    with pytest.raises(UsageError, match="precision"):
        resolve_precision("fp8", torch.nn.Linear(4, 4), torch.device("cpu"))


def test_approximate_index_records_recall_and_workers(photos_demo, tmp_path):
    s = build_index(f"files:{photos_demo['images_dir']}", "tiny", tmp_path / "h", index_kind="hnsw",
                    workers=2, batch_size=4, progress=False)
    rec = read_info(tmp_path / "h")["index"]["recall@10"]
    assert s["index"]["kind"] == "hnsw" and rec["k"] == 10 and rec["recall@10"] >= 0.95
    assert s["count"] == photos_demo["num_photos"]


def test_refuses_other_source_and_parses_sizes(built, tmp_path):
    out, _ = built
    with pytest.raises(UsageError, match="index update"):
        build_index(f"files:{tmp_path}", "tiny", out, progress=False)
    assert parse_size("4GB") == 4 * 2**30 and parse_size("512 MiB") == 512 * 2**20 and parse_size("1000") == 1000
    assert parse_size(None) is None
    with pytest.raises(UsageError):
        parse_size("lots")
