"""clipforge.scale without a cluster: unit planning, option checks, the local executor, embed-dataset's layout,
resume and hand-over to `index build`, and the CLI's flags and errors. (Ray itself: test_scale_ray.py.)"""
import builtins
import json
import os

import numpy as np
import pytest
import torch

from clipforge.cli import main
from clipforge.encode import Encoder, plan_batches
from clipforge.errors import ClipforgeError, UsageError
from clipforge.retrieval.build import build_index, update_index
from clipforge.retrieval.embed_dataset import embed_dataset
from clipforge.retrieval.store import EmbeddingStore
from clipforge.scale import EXECUTORS, EncodeJob, create_executor, plan_units


def test_plan_units_groups_runs_and_rejects_bad_grouping():
    plan = [[0, 1], [2, 3], [4, 5], [6]]
    assert plan_units(plan, [0, 0, 1, 1]) == [[0, 1], [2, 3]]
    assert plan_units(plan, [3, 5, 5, 9]) == [[0], [1, 2], [3]]
    assert plan_units(plan, None, batches_per_unit=3) == [[0, 1, 2], [3]]
    assert plan_units([], None) == []
    with pytest.raises(UsageError, match="non-decreasing"):
        plan_units(plan, [0, 1, 0, 1])
    with pytest.raises(UsageError, match="`units` has 3 entries for 4"):
        plan_units(plan, [0, 0, 1])


def test_options_are_checked_against_the_executor():
    job = EncodeJob("files:/nowhere", "tiny")
    with pytest.raises(UsageError, match="`address` does not apply to executor 'local'.*ray"):
        create_executor("local", job, address="auto")
    with pytest.raises(UsageError, match="`executor` 'spark' is unknown.*local, ray"):
        create_executor("spark", job)
    with pytest.raises(UsageError, match="`require`"):
        EncodeJob("files:/nowhere", "tiny", require="labels")
    with pytest.raises(UsageError, match="`inspect` must be a function"):
        EncodeJob("files:/nowhere", "tiny", inspect={"width": 1})
    assert {"address", "num_workers", "num_cpus_per_worker", "num_gpus_per_worker"} <= \
        {o.name for o in EXECUTORS.options("ray") if o.cli}


def test_ray_missing_is_a_one_line_error(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ClipforgeError, match=r"pip install 'clipforge\[scale\]'"):
        create_executor("ray", EncodeJob("files:/nowhere", "tiny"))


def test_local_executor_batches_and_captions(photos_demo):
    job = EncodeJob(f"files:{photos_demo['images_dir']}", "tiny", captions=True)
    with create_executor("local", job) as ex:
        assert ex.precision == "fp32" and ex.embed_dim == ex.encoder.embed_dim
        plan = plan_batches(range(len(ex.source)), 5)[::-1]  # any plan, yielded in plan order
        got = list(ex.iter_batches(plan))
    assert [b.positions for b in got] == plan
    enc = Encoder.load("tiny")
    src = job.open_source()
    for b in got:
        want_img = enc.encode_images([src[p].load_image() for p in b.positions])
        want_txt = enc.encode_texts([c[0] for c in b.captions])
        assert torch.allclose(b.feats, want_img, atol=1e-5)
        assert torch.allclose(b.text_feats, want_txt, atol=1e-5)


def test_first_caption_rows_without_one_are_zero():
    enc = Encoder.load("tiny")
    out = enc.encode_first_captions([["a red car", "ignored"], [], [""], ["a dog"]])
    assert out.shape == (4, enc.embed_dim)
    assert torch.count_nonzero(out[1]) == 0 and torch.count_nonzero(out[2]) == 0
    assert torch.allclose(out[[0, 3]], enc.encode_texts(["a red car", "a dog"]), atol=1e-6)


@pytest.fixture
def spy(monkeypatch):
    """The local executor, recording every one made: its job, each call's plan, units and source, and what it
    yielded. It stands in for "local" in the registry, so a job that encodes any other way records nothing."""
    from clipforge.scale.local import LocalExecutor

    made = []

    class Spy(LocalExecutor):
        def __init__(self, job, **kw):
            super().__init__(job, **kw)
            self.calls, self.yielded = [], []
            made.append(self)

        def iter_batches(self, plan, units=None, *, source=None, **kw):
            self.calls.append((plan, units, source))
            for item in super().iter_batches(plan, units, source=source, **kw):
                self.yielded.append(item)
                yield item

    monkeypatch.setitem(EXECUTORS._entries, "local", Spy)
    return made


def test_index_build_and_update_encode_only_through_the_executor(photos_demo, tmp_path, spy):
    """build_index and update_index hand the executor one job carrying engine, precision and threads (the
    model runs as the job says), one unit per committed shard, and the source they opened; every stored row
    is one the executor yielded."""
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(photos_demo["images_dir"], root)
    out = tmp_path / "idx"
    build_index(f"files:{root}", "tiny", out, batch_size=3, shard_size=7, workers=0, precision="fp32",
                engine="torch", threads=1, index_kind="flat", progress=False)
    (ex,) = spy
    job = ex.job
    assert (job.engine, job.threads, job.precision, job.captions, job.workers) == ("torch", 1, "fp32", True, 0)
    assert ex.encoder.engine.name == "torch" and ex.encoder.engine.threads == 1  # loaded as the job says
    ((plan, units, source),) = ex.calls
    assert source is not None and len(source) == photos_demo["num_photos"]  # the build's own opened source
    assert all(len(b) <= 3 for b in plan) and units == sorted(units)
    per_unit = {u: [p for b, v in zip(plan, units) if v == u for p in b] for u in set(units)}
    assert [len(per_unit[u]) for u in sorted(per_unit)] == [len(g) for g in plan_batches(range(len(source)), 7)]
    keys, _, _ = _store_rows(out)
    assert sorted(keys) == sorted(i for b in ex.yielded for i in b.ids) and len(keys) == len(set(keys))

    first = next(p for p in sorted(root.iterdir()) if p.suffix == ".png")
    shutil.copy(first, root / "zz_new.png")
    shutil.copy(first.with_suffix(".txt"), root / "zz_new.txt")
    s = update_index(out, workers=0, threads=2, progress=False)
    _, upd = spy
    assert (upd.job.engine, upd.job.threads, upd.job.precision, upd.job.captions) == ("torch", 2, "fp32", True)
    assert s["added"] == 1 and [i for b in upd.yielded for i in b.ids] == ["zz_new.png"]
    assert len(_store_rows(out)[0]) == photos_demo["num_photos"] + 1


def test_curate_score_encodes_only_through_the_executor(photos_demo, tmp_path, spy):
    """score_source hands the executor one job (inspect and score where each batch is encoded, engine and
    threads), one unit per committed part; a loaded model is handed over as it is, never loaded again."""
    from clipforge.curate import read_scores, score_source

    spec = f"files:{photos_demo['images_dir']}"
    s = score_source(spec, "tiny", tmp_path / "a.parquet", batch_size=4, part_size=6, precision="fp32",
                     engine="torch", threads=1, lang=False, progress=False)
    (ex,) = spy
    assert (ex.job.engine, ex.job.threads, ex.job.precision) == ("torch", 1, "fp32")
    assert ex.job.after is not None and ex.job.inspect is not None and s["executor"] == {"executor": "local"}
    ((plan, units, source),) = ex.calls
    assert units == [p // 6 for b in plan for p in b[:1]] and source is not None
    rows = read_scores(tmp_path / "a.parquet").column("id").to_pylist()
    assert rows == [i for t in ex.yielded for i in t.column("id").to_pylist()]  # every row came from it

    enc = Encoder.load("tiny")
    score_source(spec, enc, tmp_path / "b.parquet", part_size=6, lang=False, progress=False)
    assert spy[1].encoder is enc


def _store_rows(root, modality="img"):
    s = EmbeddingStore.open(root)
    x, ids = s.load(modality, as_float32=False)
    keys = s.metadata(["id", "key"]).to_pylist()
    return [r["key"] for r in keys], ids, x


def test_embed_dataset_layout_resume_and_index_handover(photos_demo, tmp_path):
    src = f"files:{photos_demo['images_dir']}"
    out = tmp_path / "emb"
    s = embed_dataset(src, "tiny", out, batch_size=4, shard_size=8, progress=False)
    n = photos_demo["num_photos"]
    assert s["count"] == s["embedded"] == n and s["index"] is None
    shards = -(-n // 8)
    for sub, ext in (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet")):
        assert sorted(os.listdir(out / sub)) == sorted(f"{sub}_{i}.{ext}" for i in range(shards))
    x = np.load(out / "img_emb" / "img_emb_0.npy")
    assert x.dtype == np.float16 and x.shape == (8, Encoder.load("tiny").embed_dim)
    assert np.allclose(np.linalg.norm(x.astype(np.float32), axis=1), 1, atol=2e-3)
    assert not (out / "index.faiss").exists() and json.loads((out / "index.json").read_text())["status"] == "embedded"
    keys, ids, _ = _store_rows(out)

    again = embed_dataset(src, "tiny", out, batch_size=4, shard_size=8, progress=False)  # nothing left to do
    assert again["embedded"] == 0 and again["resumed_from"] == n

    built = build_index(src, "tiny", out, progress=False, index_kind="flat")  # adds the index, embeds nothing
    assert built["embedded"] == 0 and built["index"]["kind"] == "flat" and (out / "index.faiss").exists()
    assert _store_rows(out)[0] == keys and len(set(keys)) == n


def test_cli_embed_dataset_and_engine_flags(photos_demo, tmp_path, capsys):
    src = f"files:{photos_demo['images_dir']}"
    out = tmp_path / "cli"
    assert main(["embed-dataset", src, "-m", "tiny", "--out", str(out), "--shard-size", "10", "--workers", "0",
                 "--no-text", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["count"] == photos_demo["num_photos"] and s["executor"] == {"executor": "local"}
    assert not (out / "text_emb").exists()
    # an executor option the chosen engine does not take is an error naming the flags, before any work
    rc = main(["index", "build", src, "-m", "tiny", "--out", str(tmp_path / "x"), "--address", "auto"])
    err = capsys.readouterr().err
    assert rc == 2 and "--address does not apply to executor 'local'" in err and "ray" in err
    assert not (tmp_path / "x").exists()
    rc = main(["embed-dataset", src, "-m", "tiny", "--out", str(tmp_path / "y"), "--executor", "ray",
               "--num-workers", "0"])
    assert rc == 2 and "--num-workers must be >= 1" in capsys.readouterr().err


@pytest.fixture
def fake_ray(monkeypatch):
    """A stand-in for the Ray executor (same name and options, encoding here): each one made, as (job,
    options)."""
    from clipforge.scale.local import LocalExecutor
    from clipforge.scale.ray_executor import RayExecutor

    made = []

    class FakeRay(LocalExecutor):
        name, options = "ray", RayExecutor.options

        def __init__(self, job, **options):
            made.append((job, options))
            super().__init__(job)

        def describe(self):
            return {"executor": "ray", "num_workers": made[-1][1]["num_workers"]}

    monkeypatch.setitem(EXECUTORS._entries, "ray", FakeRay)
    return made


@pytest.mark.parametrize("command", ["embed-dataset", "curate score"])
def test_executor_flag_and_deprecated_engine_ray_pick_the_same_executor(command, photos_demo, tmp_path, capsys,
                                                                         fake_ray):
    """`--executor ray` and the old `--engine ray` reach the same executor with the same options and runtime;
    only the old spelling prints its one deprecation line. --engine then names the runtime alone."""
    src = f"files:{photos_demo['images_dir']}"
    out = {"embed-dataset": "emb", "curate score": "s.parquet"}[command]
    base = [*command.split(), src, "-m", "tiny", "--workers", "0", "--num-workers", "2", "--json"]
    errs = []
    for i, flags in enumerate((["--executor", "ray"], ["--engine", "ray"], ["--executor", "ray", "--threads", "1"])):
        assert main(base + ["--out", str(tmp_path / str(i) / out), *flags]) == 0
        got = capsys.readouterr()
        assert json.loads(got.out)["executor"] == {"executor": "ray", "num_workers": 2}
        errs.append([line for line in got.err.splitlines() if "deprecated" in line])
    (new, new_opts), (old, old_opts), (threads, _) = fake_ray
    assert new_opts == old_opts and new_opts["num_workers"] == 2 and new_opts["address"] is None
    assert (new.engine, new.threads) == (old.engine, old.threads) == ("torch", None)
    assert (threads.engine, threads.threads) == ("torch", 1)  # the runtime's flags reach every worker's job
    assert errs[0] == errs[2] == [] and errs[1] == [
        "warning: --engine ray is deprecated and will be removed in the next release: use --executor ray "
        "(--engine names the inference runtime: auto, torch, onnx, openvino)"]


def test_executor_flag_errors_name_the_flags(photos_demo, tmp_path, capsys, fake_ray):
    src = f"files:{photos_demo['images_dir']}"
    base = ["embed-dataset", src, "-m", "tiny", "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as e:
        main(base + ["--executor", "spark"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --executor: invalid choice: 'spark'" in err and "ray" in err
    assert main(base + ["--engine", "ray", "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "--engine ray (the deprecated spelling of --executor ray) and --executor local disagree" in err
    assert main(base + ["--engine", "onnx", "--address", "auto"]) == 2  # an executor option needs its executor
    assert "--address does not apply to executor 'local'" in capsys.readouterr().err
    assert not fake_ray and not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def photo_shards(photos_demo, tmp_path_factory):
    """The photos demo as webdataset shards of 5 samples (5 shards)."""
    from clipforge.data.sources import open_source
    from clipforge.data.write import write_wds

    out = tmp_path_factory.mktemp("wds") / "shards"
    write_wds(open_source(f"files:{photos_demo['images_dir']}"), str(out), shard_size=5, progress=False)
    return f"wds:{out}"


def test_wds_locate_splits_by_shard_and_reads_the_same_samples(photo_shards, photos_demo):
    from clipforge.data.sources import open_source

    src = open_source(photo_shards)
    n = len(src)
    parts = src.locate([1, 4, 5, 6, n - 1])
    assert [len(g) for _, g, _ in parts] == [2, 2, 1] and all(spec.startswith("wds:") for spec, _, _ in parts)
    for spec, glob, loc in parts:
        alone = open_source(spec)
        assert len(alone.urls) == 1
        assert [alone[i].id for i in loc] == [src[p].id for p in glob]
        assert [alone[i].image_bytes() for i in loc] == [src[p].image_bytes() for p in glob]
    files = open_source(f"files:{photos_demo['images_dir']}")  # not sharded: the whole source
    assert files.locate([0, 2]) == [(None, [0, 2], [0, 2])]


def _run_in_actor_logic(worker, src, plan, batches_per_unit):
    """What the Ray executor sends a `_UnitWorker` actor, unit by unit (without Ray): the results, in order."""
    import pickle

    got = []
    for unit in plan_units(plan, None, batches_per_unit=batches_per_unit):
        unit_plan = [plan[b] for b in unit]
        parts = src.locate([p for b in unit_plan for p in b])
        work = np.array([json.dumps({"plan": unit_plan, "parts": parts})], dtype=object)
        got += pickle.loads(worker({"unit": np.array([0]), "work": work})["payload"][0])
    return got


def test_unit_worker_reads_only_its_shards_and_equals_local(photo_shards, monkeypatch):
    """The Ray actor's logic, run here without Ray: it opens the single shards its unit lives in, never the
    whole collection, and returns the same batches (positions, ids, vectors, captions) as the local run."""
    import clipforge.scale.ray_executor as rx
    from clipforge.data.sources import open_source

    job = EncodeJob(photo_shards, "tiny", captions=True)
    src = job.open_source()
    plan = plan_batches(range(len(src)), 3)
    with create_executor("local", job) as ex:
        want = list(ex.iter_batches(plan))
    opened = []
    monkeypatch.setattr(rx, "open_source", lambda spec, **kw: opened.append(spec) or open_source(spec, **kw))
    monkeypatch.setattr(EncodeJob, "open_source", lambda self: pytest.fail("the actor opened the whole source"))
    got = _run_in_actor_logic(rx._worker_class(job, 1)(), src, plan, batches_per_unit=2)
    assert opened and all(len(open_source(s).urls) == 1 for s in opened)
    assert [b.positions for b in got] == [b.positions for b in want] == plan
    for a, b in zip(want, got):
        assert a.ids == b.ids and a.captions == b.captions
        assert torch.allclose(a.feats, b.feats, atol=1e-6) and torch.allclose(a.text_feats, b.text_feats, atol=1e-6)


def _norms_and_ids(encoder, batch, *, scale):
    """A module-level `after` (it must pickle): what a job would compute where the batch was encoded."""
    return {"positions": list(batch.positions), "ids": list(batch.ids),
            "score": (batch.feats @ batch.text_feats.T).diagonal().mul(scale).tolist() if batch.ids else [],
            "dim": encoder.embed_dim, "skipped": batch.skipped.total}


def test_after_runs_where_the_batch_was_encoded(photo_shards):
    """`EncodeJob.after`: each batch's own result replaces the batch, the same from the local executor and the
    Ray actor's logic (run here without Ray, through a pickled job, as a worker receives it)."""
    import functools
    import pickle

    import clipforge.scale.ray_executor as rx

    after = functools.partial(_norms_and_ids, scale=2.0)
    job = EncodeJob(photo_shards, "tiny", captions=True, after=after)
    plain = EncodeJob(photo_shards, "tiny", captions=True)
    src = job.open_source()
    plan = plan_batches(range(len(src)), 4)
    with create_executor("local", plain) as ex:
        batches = list(ex.iter_batches(plan))
    with create_executor("local", job) as ex:
        local = list(ex.iter_batches(plan))
    assert [r["positions"] for r in local] == plan and [r["ids"] for r in local] == [b.ids for b in batches]
    for r, b in zip(local, batches):  # the function really ran on the encoded batch
        want = 2.0 * (b.feats * b.text_feats).sum(1)
        assert np.allclose(r["score"], want.tolist(), atol=1e-5)
    remote = _run_in_actor_logic(rx._worker_class(pickle.loads(pickle.dumps(job)), 1)(), src, plan, batches_per_unit=3)
    assert [r["ids"] for r in remote] == [r["ids"] for r in local]
    assert np.allclose(sum((r["score"] for r in remote), []), sum((r["score"] for r in local), []), atol=1e-6)
    with pytest.raises(UsageError, match="`after` must be a function"):
        EncodeJob(photo_shards, "tiny", after="score")


class _FlakyRay:
    """Stands in for the `ray` module: its node start-up times out `fail` times (as on a loaded machine)."""

    def __init__(self, fail):
        self.fail, self.inits, self.shutdowns = fail, 0, 0

    def is_initialized(self):
        return False

    def init(self, **kw):
        self.inits += 1
        assert kw["address"] == "local" and kw["_node_ip_address"] == "127.0.0.1"  # loopback only
        if self.inits <= self.fail:
            raise Exception("The current node timed out during startup. This could happen because ...")

    def shutdown(self):
        self.shutdowns += 1


def test_local_ray_start_retries_once_then_fails_in_one_line(monkeypatch):
    from clipforge.scale.ray_executor import _connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = _FlakyRay(fail=1)
    assert _connect(ray, None) is True and ray.inits == 2 and ray.shutdowns == 1
    ray = _FlakyRay(fail=5)
    with pytest.raises(ClipforgeError, match=r"could not start a local Ray cluster \(2 tries\): The current node "
                                             r"timed out during startup.*`address`='auto'") as e:
        _connect(ray, None)
    assert "\n" not in str(e.value) and ray.inits == 2 and ray.shutdowns == 2
