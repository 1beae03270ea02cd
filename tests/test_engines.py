"""Inference engines: ONNX Runtime and OpenVINO against the torch reference, thread settings, int8, the
export cache, `auto`'s measured choice, and `--engine` on the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from clipforge.encode import ENGINES, Encoder
from clipforge.encode.auto import available_engines, calibrate
from clipforge.encode.exported import exported_graphs
from clipforge.errors import UsageError
from clipforge.models import create_model

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

TEXTS = ["a photo of a cat", "a dog", "one two three four five six seven eight nine ten eleven", "", "x y"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny").eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("engine-cache"))


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, 32, 32, generator=g)


def _cos_dist(a, b):
    return (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).max().item()


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_fp32_engines_match_torch_within_1e4_cosine(engine, model, cache, inputs):
    ref = Encoder.from_model(model)
    enc = Encoder.from_model(model, engine=engine, cache_dir=cache)
    assert enc.precision == "fp32" and enc.engine.describe()["engine"] == engine
    assert _cos_dist(enc.encode_pixels(inputs), ref.encode_pixels(inputs)) <= 1e-4
    # captions of different lengths: the text graph takes a dynamic sequence length after exact trimming
    assert _cos_dist(enc.encode_texts(TEXTS), ref.encode_texts(TEXTS)) <= 1e-4
    raw, raw_ref = enc.encode_pixels(inputs, normalize=False), ref.encode_pixels(inputs, normalize=False)
    assert torch.allclose(raw.norm(dim=-1), raw_ref.norm(dim=-1), rtol=1e-4)  # unnormalised too
    assert enc.encode_pixels(inputs[:0]).shape == (0, 64)


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_resnet_tower_exports_and_matches_torch(engine, cache, inputs):
    torch.manual_seed(0)
    resnet = create_model("tiny-resnet").eval()
    ref = Encoder.from_model(resnet)
    enc = Encoder.from_model(resnet, engine=engine, cache_dir=cache)
    assert _cos_dist(enc.encode_pixels(inputs), ref.encode_pixels(inputs)) <= 1e-4
    assert _cos_dist(enc.encode_texts(TEXTS), ref.encode_texts(TEXTS)) <= 1e-4


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_results_do_not_depend_on_the_thread_count(engine, model, cache, inputs):
    one = Encoder.from_model(model, engine=engine, threads=1, cache_dir=cache)
    two = Encoder.from_model(model, engine=engine, threads=2, cache_dir=cache)
    assert torch.equal(one.encode_pixels(inputs), two.encode_pixels(inputs))
    assert torch.equal(one.encode_texts(TEXTS), two.encode_texts(TEXTS))


def test_torch_engine_threads_apply_per_call_only(model, inputs):
    before = torch.get_num_threads()
    Encoder.from_model(model, threads=1).encode_pixels(inputs)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_int8_is_close_but_not_identical(engine, model, cache, inputs):
    ref = Encoder.from_model(model)
    enc = Encoder.from_model(model, engine=engine, precision="int8", cache_dir=cache)
    assert enc.precision == "int8"
    img, img_ref = enc.encode_pixels(inputs), ref.encode_pixels(inputs)
    assert torch.allclose(img.norm(dim=-1), torch.ones(len(img)), atol=1e-5)
    # quantisation moves embeddings (its cost is measured in bench/bench_engines.py), but not far
    assert 0 < _cos_dist(img, img_ref) < 0.1


def test_exports_are_cached_per_model_and_precision(model, cache, tmp_path):
    paths = exported_graphs(model, "fp32", cache)
    stamp = {t: p.stat().st_mtime_ns for t, p in paths.items()}
    assert exported_graphs(model, "fp32", cache) == paths
    assert {t: p.stat().st_mtime_ns for t, p in paths.items()} == stamp  # not exported again
    torch.manual_seed(5)
    other = create_model("tiny")  # other weights, another fingerprint
    assert exported_graphs(other, "fp32", tmp_path)["image"].parent.parent.name != paths["image"].parent.parent.name
    assert exported_graphs(model, "int8", cache)["image"].parent.name == "int8"


def test_engine_errors_name_the_parameter(model, cache):
    with pytest.raises(UsageError, match=r"`precision` 'bf16' is not offered by `engine` onnx \(it offers auto, "
                                         r"fp32, int8\); bf16 needs `engine` auto, openvino, torch"):
        Encoder.from_model(model, engine="onnx", precision="bf16", cache_dir=cache)
    with pytest.raises(UsageError, match=r"`precision` 'int8' is not offered by `engine` torch \(it offers auto, "
                                         r"fp32, bf16, fp16\); int8 needs `engine` auto, onnx, openvino"):
        Encoder.from_model(model, engine="torch", precision="int8")
    with pytest.raises(UsageError, match="`threads` must be >= 1"):
        Encoder.from_model(model, engine="onnx", threads=0, cache_dir=cache)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            Encoder.from_model(model, engine="onnx", device="cuda", cache_dir=cache)


def test_auto_picks_the_fastest_measured_and_caches_the_measurement(model, cache, monkeypatch):
    cal = calibrate(model, cache_dir=cache, candidates=["torch", "onnx"])
    best = min(cal["measured"], key=lambda r: r["score"])
    assert cal["choice"] == {"engine": best["engine"], "threads": best["threads"]}
    assert {r["engine"] for r in cal["measured"]} == {"torch", "onnx"}
    # only thread counts that cannot change results are tried: torch (MKL) runs with the process's own
    assert {r["threads"] for r in cal["measured"] if r["engine"] == "torch"} == {torch.get_num_threads()}
    assert cal["machine"]["cores"] and "torch" in cal["machine"]["versions"]

    def no_timing(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr("clipforge.encode.auto._time", no_timing)
    assert calibrate(model, cache_dir=cache, candidates=["torch", "onnx"])["choice"] == cal["choice"]
    enc = Encoder.from_model(model, engine="auto", cache_dir=cache, candidates=["torch", "onnx"])
    assert enc.engine.name == cal["choice"]["engine"]
    assert enc.engine.describe()["threads"] == cal["choice"]["threads"]


def test_one_precision_list_per_engine_in_every_command(model, tmp_path, capsys):
    """`eval` and `embed-dataset` say the same thing for the same engine and precision, and `eval --engine onnx
    --precision int8` runs (the evaluation used to check the precision against torch's list)."""
    from clipforge.cli import main
    from clipforge.evaluate import run_eval

    ckpt = str(model.save_pretrained(tmp_path / "m"))
    data = tmp_path / "d"
    for c in ("cat", "dog"):
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (i * 90, 40, 200 if c == "cat" else 10)).save(data / c / f"{i}.png")
    msgs = []
    for argv in (["eval", "--task", "zeroshot-classification", "--model", ckpt, "--dataset", f"imagefolder:{data}"],
                 ["embed-dataset", f"imagefolder:{data}", "-m", ckpt, "--out", str(tmp_path / "e")]):
        for engine, precision in (("torch", "int8"), ("onnx", "bf16")):
            assert main(argv + ["--engine", engine, "--precision", precision]) == 2
            msgs.append(capsys.readouterr().err.split("error: ", 1)[1])
    assert msgs[:2] == msgs[2:] and "--precision 'int8' is not offered by --engine torch" in msgs[0]
    enc = Encoder.from_model(model, engine="onnx", precision="int8", cache_dir=tmp_path / "cache")
    rec = run_eval(enc, "zeroshot-classification", f"imagefolder:{data}", precision="int8")
    assert rec["config"]["precision"] == "int8" and 0.0 <= rec["metrics"]["top1"] <= 1.0


def test_auto_candidates_are_the_engines_offering_the_precision():
    assert available_engines(None) == ["torch", "onnx", "openvino"]
    assert available_engines("fp16") == ["torch"] and available_engines("int8") == ["onnx", "openvino"]
    assert "auto" in ENGINES and ENGINES.get("onnx").precisions == ("auto", "fp32", "int8")


def test_cli_engine_flag(model, cache, tmp_path, rgb_image):
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    img = tmp_path / "a.png"
    rgb_image.save(img)
    r = subprocess.run([sys.executable, "-m", "clipforge", "embed", "--model", str(ck), "--text", "a red cat",
                        "--image", str(img), "--engine", "onnx", "--threads", "1", "--json"],
                       capture_output=True, text=True, env={**os.environ, "CLIPFORGE_CACHE": cache})
    assert r.returncode == 0, r.stderr
    got = torch.tensor([row["vector"] for row in json.loads(r.stdout)])
    ref = Encoder.load(ck)
    assert _cos_dist(got, torch.cat([ref.encode_texts(["a red cat"]), ref.encode_images([img])])) <= 1e-4
    r = subprocess.run([sys.executable, "-m", "clipforge", "index", "build", str(tmp_path), "--model", str(ck),
                        "--out", str(tmp_path / "idx"), "--precision", "int8"], capture_output=True, text=True)
    assert r.returncode == 2 and "--precision 'int8' is not offered by --engine torch" in r.stderr, r.stderr
