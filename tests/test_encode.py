"""clipforge.encode: the one encoding layer (engine seam, device/precision policy, image opener, batches)
and the acceptance check that every entry point embeds an EXIF-rotated photo the same, upright."""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.cli import main
from clipforge.data.decode import SkipCounter
from clipforge.data.sources import open_source
from clipforge.data.sources.filelist import FileListSource
from clipforge.encode import (ENGINES, Encoder, Engine, ImageError, as_encoder, iter_image_batches, list_engines,
                              open_image, pick_device, resolve_precision)
from clipforge.errors import UsageError
from data_fixtures import make_mixed_folder, make_pair_folder


def _rotated_photo(photos_demo, path) -> np.ndarray:
    """Write a JPEG whose pixels are stored rotated with EXIF orientation 6 ("rotate 90 degrees clockwise to
    display"); return its upright pixels, computed from the stored ones with numpy (no Pillow EXIF code)."""
    upright = np.asarray(Image.open(f"{photos_demo['images_dir']}/astronaut.png").convert("RGB"))
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))  # counter-clockwise
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(path, "JPEG", quality=95, exif=exif)
    raw = np.asarray(Image.open(path).convert("RGB"))  # decoded, orientation not applied
    return np.ascontiguousarray(np.rot90(raw, k=-1))  # clockwise: what a viewer shows


@pytest.fixture(scope="module")
def rotated(photos_demo, tmp_path_factory):
    d = tmp_path_factory.mktemp("exif")
    upright = _rotated_photo(photos_demo, d / "rotated.jpg")
    return d / "rotated.jpg", upright


def test_open_image_applies_exif_to_files_and_bytes_and_takes_pil_images_as_given(rotated):
    path, upright = rotated
    for given in (path, str(path), path.read_bytes()):
        np.testing.assert_array_equal(np.asarray(open_image(given)), upright)
    raw = Image.open(path)  # decoded by the caller: its pixels are used as they are (EXIF tag not re-applied)
    np.testing.assert_array_equal(np.asarray(open_image(raw)), np.asarray(raw.convert("RGB")))
    turned = Image.open(path).transpose(Image.Transpose.ROTATE_270)  # keeps the source's EXIF tag in .info
    np.testing.assert_array_equal(np.asarray(open_image(turned)), upright)
    with pytest.raises(ImageError, match="missing_file") as e:
        open_image(path.parent / "nope.jpg")
    assert e.value.reason == "missing_file" and isinstance(e.value, UsageError)
    with pytest.raises(ImageError, match="too_large"):
        open_image(path, max_pixels=100)
    with pytest.raises(ImageError, match="not_an_image"):
        open_image(b"not an image at all")


def test_cli_and_http_image_queries_embed_an_exif_rotated_photo_identically(rotated, photos_demo, tmp_path,
                                                                            capsys):
    """Acceptance: `clipforge embed --image`, `clipforge search --image` and an HTTP image query all see the
    photo upright, and the two queries give identical results."""
    from fastapi.testclient import TestClient

    from clipforge.retrieval.build import build_index
    from clipforge.retrieval.index_searcher import IndexSearcher
    from clipforge.serve.app import create_app

    path, upright = rotated
    enc = Encoder.load("tiny")  # the weights every `tiny` reference gets (fixed seed)
    want = enc.encode_images([Image.fromarray(upright)])[0].numpy()
    sideways = enc.encode_images([Image.fromarray(np.asarray(Image.open(path).convert("RGB")))])[0].numpy()
    assert float(want @ sideways) < 0.999  # orientation changes the embedding, so the checks below can fail

    assert main(["embed", "--model", "tiny", "--image", str(path), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(row["vector"], want, atol=2e-6)  # the JSON rounds to 6 decimals

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "rocket", "chelsea", "moon"):
        shutil.copy(f"{photos_demo['images_dir']}/{name}.png", photos)
    idx = tmp_path / "idx"
    build_index(f"files:{photos}", "tiny", idx, batch_size=8, progress=False)
    engine = IndexSearcher(idx)
    np.testing.assert_allclose(engine.query_vector(image=str(path)), want / np.linalg.norm(want), atol=1e-6)

    assert main(["search", str(idx), "--image", str(path), "-k", "5", "--json"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    client = TestClient(create_app(idx, searcher=IndexSearcher(idx)))
    r = client.post("/search", json={"image": base64.b64encode(path.read_bytes()).decode(), "k": 5})
    assert r.status_code == 200, r.text
    http = r.json()["results"]
    assert [h["id"] for h in cli] == [h["id"] for h in http] and len(cli) == 5
    assert [h["score"] for h in cli] == pytest.approx([h["score"] for h in http], abs=1e-6)
    assert cli[0]["key"] == "astronaut.png"  # the upright photo finds its own original first


def test_engine_registry_is_the_seam(tiny_model):
    """Encoding goes through the registered engine, never the model directly: a stand-in engine registered
    here is what `Encoder` calls."""
    assert "torch" in list_engines()
    calls = []

    @ENGINES.register("test-double")
    class Doubling(Engine):
        def __init__(self, model, device=None, precision=None):
            self.model, self.device, self.precision = model, torch.device("cpu"), "fp32"
            self.embed_dim, self.preprocess, self.tokenizer = 2, model.preprocess, model.tokenizer

        def encode_pixels(self, pixels, normalize=True):
            calls.append(("pixels", len(pixels)))
            return torch.ones(len(pixels), 2)

        def encode_tokens(self, token_ids, normalize=True):
            calls.append(("tokens", len(token_ids)))
            return torch.full((len(token_ids), 2), 2.0)

    enc = Encoder.from_model(tiny_model, engine="test-double")
    assert enc.encode_texts(["a", "b", "c"], batch_size=2).tolist() == [[2.0, 2.0]] * 3
    assert enc.encode_images([Image.new("RGB", (8, 8))] * 3, batch_size=2).shape == (3, 2)
    assert calls == [("tokens", 2), ("tokens", 1), ("pixels", 2), ("pixels", 1)]
    with pytest.raises(UsageError, match="`engine` 'nope' is unknown; the registered inference engines are"):
        Encoder.from_model(tiny_model, engine="nope")
    with pytest.raises(UsageError, match="`cache_dir` does not apply to inference engine 'torch' "
                                         r"\(it belongs to inference engine auto, onnx, openvino\)"):
        Encoder.from_model(tiny_model, cache_dir="x")


def test_torch_engine_matches_the_model_and_keeps_its_mode(tiny_model, rgb_image):
    tiny_model.train()
    enc = as_encoder(tiny_model)
    ids = tiny_model.tokenizer(["a photo of a cat", "a dog"])
    with torch.no_grad():
        tiny_model.eval()
        want_t = tiny_model.encode_text(ids)
        want_i = tiny_model.encode_image(tiny_model.preprocess(rgb_image)[None])
        tiny_model.train()
    torch.testing.assert_close(enc.encode_texts(["a photo of a cat", "a dog"], batch_size=1), want_t)
    torch.testing.assert_close(enc.encode_images([rgb_image]), want_i)
    assert tiny_model.training  # restored after each call
    assert as_encoder(enc) is enc and enc.precision == "fp32" and enc.embed_dim == 64


def test_precision_and_device_policy(tiny_model):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", tiny_model, cpu) == "fp32"  # too small for bf16 casts to pay
    assert resolve_precision("bf16", tiny_model, cpu) == "bf16"
    with pytest.raises(UsageError, match="`precision` 'fp8' is unknown"):
        resolve_precision("fp8", tiny_model, cpu)
    enc = Encoder.from_model(tiny_model, precision="bf16")
    assert enc.precision == "bf16" and tiny_model.dtype == torch.bfloat16  # weights cast, not autocast
    assert enc.encode_texts(["x"]).dtype == torch.float32  # outputs are float32 whatever the weights
    assert pick_device("cpu") == cpu and pick_device(None).type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="`run.device` cuda: CUDA is not available"):
            pick_device("cuda", param="run.device")


def test_source_batches_count_skips_and_keep_rows(tmp_path, tiny_model):
    expected = make_mixed_folder(str(tmp_path / "mixed"))
    src = FileListSource(sorted(str(tmp_path / "mixed" / n) for n in expected))
    enc = as_encoder(tiny_model)
    res = enc.encode_source(src, batch_size=4, progress=False)
    good = [n for n, reason in expected.items() if reason is None]
    assert sorted(i.rsplit("/", 1)[1] for i in res.ids) == sorted(good) and res.feats.shape == (len(good), 64)
    want = {}
    for reason in expected.values():
        if reason:
            want[reason] = want.get(reason, 0) + 1
    assert dict(res.skipped) == want
    # rows are the same whatever the batch size or the number of decoding workers
    res2 = enc.encode_source(src, batch_size=3, workers=2, progress=False)
    assert res2.ids == res.ids and dict(res2.skipped) == want
    torch.testing.assert_close(res2.feats, res.feats)


def test_required_labels_captions_and_a_custom_plan(tmp_path, tiny_model):
    rows = make_pair_folder(str(tmp_path / "pairs"), n=10)
    src = open_source(f"files:{tmp_path / 'pairs'}")
    enc = as_encoder(tiny_model)
    lab = enc.encode_source(src, require="label", progress=False)
    assert sorted(lab.ids) == sorted(r["id"] for r in rows if r["label"] is not None)
    assert lab.skipped["no_label"] == sum(r["label"] is None for r in rows)
    assert lab.label_tensor().tolist() == [next(r["label"] for r in rows if r["id"] == i) for i in lab.ids]
    plan = [[9, 0], [3], [], [5, 6, 7]]
    skipped = SkipCounter()
    batches = list(enc.iter_source(src, batches=plan, skipped=skipped, progress=False))
    assert [b.positions for b in batches] == plan and all(b.pixels is None for b in batches)
    assert [b.ids for b in batches] == [[src[i].id for i in g] for g in plan]
    captions = [b.captions for b in batches]
    assert captions[0] == [src[9].captions, src[0].captions]

    class Streaming:  # read once in order (like remote shards): the plan's groups must come out the same
        random_access, spec = False, "stream"

        def __iter__(self):
            return (src[i] for i in range(len(src)))

    sorted_plan = [[0, 1], [3], [], [5, 6, 7], [9]]
    streamed = list(enc.iter_source(Streaming(), batches=sorted_plan, progress=False))
    assert [b.positions for b in streamed] == sorted_plan
    direct = {i: f for b in enc.iter_source(src, batch_size=4, progress=False) for i, f in zip(b.positions, b.feats)}
    torch.testing.assert_close(torch.cat([b.feats for b in streamed]),
                               torch.stack([direct[i] for g in sorted_plan for i in g]))
    with pytest.raises(UsageError, match="`require`"):
        next(iter_image_batches(src, tiny_model.preprocess, require="text"))
