"""timm image towers (`vision.arch: timm`) against timm itself, on the same weights. Runs only where timm
imports — not in this project's venv (timm needs torchvision, which does not load beside torch 2.13); run it in
an environment with torch + torchvision + timm (docs/pretrained.md records the run: torch 2.14.1, timm 1.0.31):

    PYTHONPATH=src /work/refenv/bin/python -m pytest tests/test_timm_tower.py

Weights are timm's random init saved to a local file (the hub is never asked), with BatchNorm statistics
randomised so that they matter.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_data_config  # noqa: E402
from timm.models import group_parameters  # noqa: E402

from clipforge.errors import ClipforgeError  # noqa: E402
from clipforge.models import CLIPConfig, TextConfig, TimmConfig, build_model, load_model  # noqa: E402
from clipforge.models.onnx_export import export_tower  # noqa: E402
from clipforge.models.param_count import parameter_counts  # noqa: E402
from clipforge.train.optim import lock_tower, make_optimizer, tower_is_frozen  # noqa: E402

TEXT = TextConfig(width=32, layers=1, heads=2, vocab_size=1000, context_length=8)


def _reference(name: str, seed: int = 0) -> torch.nn.Module:
    """A timm model with its classifier, random weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    ref = timm.create_model(name, pretrained=False)
    for m in ref.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return ref.eval()


def _model(name: str, weights=None, **vision):
    cfg = CLIPConfig(embed_dim=24, vision=TimmConfig(model=name, pretrained=weights and str(weights), **vision),
                     text=TEXT)
    return build_model(cfg, pretrained=weights is not None)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    ref = _reference("resnet18")
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))  # fc.* included: dropped
    return ref, path


def _pixels(n=3, size=224, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _timm_features(ref, x):
    with torch.no_grad():
        return ref.forward_head(ref.forward_features(x), pre_logits=True)


def test_features_equal_timms_own_on_the_same_weights(resnet):
    ref, path = resnet
    model = _model("resnet18", path).eval()
    x = _pixels()
    with torch.no_grad():
        ours = model.visual.features(x)
        emb = model.encode_image(x)
    want = _timm_features(ref, x)
    assert ours.shape == (3, 512) and (ours - want).abs().max().item() <= 1e-5
    assert torch.allclose(emb, F.normalize(model.visual.head(want), dim=-1), atol=1e-5)
    assert model.config.vision.feature_dim == 512


def test_a_pickled_state_dict_and_the_output_width_of_other_poolings(tmp_path):
    ref = _reference("mobilenetv3_small_050", seed=3)
    path = tmp_path / "pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    model = _model("mobilenetv3_small_050", tmp_path).eval()  # a directory: its pytorch_model.bin, weights-only
    x = _pixels(2)
    with torch.no_grad():
        assert (model.visual.features(x) - _timm_features(ref, x)).abs().max().item() <= 1e-5
    assert model.config.vision.feature_dim == 1024  # after its head conv (num_features is 288)
    cat = _model("resnet18", pool="catavgmax")
    assert cat.config.vision.feature_dim == 1024 and cat.visual.head.in_features == 1024


def test_preprocessing_is_timms_pretrained_cfg_pipeline():
    model = _model("resnet18")
    data = resolve_data_config({}, model=timm.create_model("resnet18", pretrained=False))
    pre = model.config.preprocess
    assert (pre.crop_pct, pre.interpolation, model.config.vision.image_size) == (
        data["crop_pct"], data["interpolation"], data["input_size"][-1])
    reference = create_transform(**data)
    rng = np.random.default_rng(0)
    for w, h in ((300, 200), (225, 500), (224, 224), (97, 131)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert (model.preprocess(img) - reference(img)).abs().max().item() <= 1e-6


def test_lock_whole_and_last_blocks_follow_timms_groups():
    model = _model("mobilenetv3_small_050")
    groups = [names for _, names in sorted(group_parameters(model.visual.model,
                                                            model.visual.model.group_matcher()).items())]
    lock_tower(model.visual, 0)
    assert {n for n, p in model.visual.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    assert tower_is_frozen(model.visual)
    lock_tower(model.visual, 2)  # the last two blocks + the head conv after them (timm's trailing group)
    want = {f"model.{n}" for g in groups[-3:] for n in g} | {"head.weight", "head.bias"}
    assert groups[-1] == ["conv_head.weight", "conv_head.bias"]
    assert {n for n, p in model.visual.named_parameters() if p.requires_grad} == want
    assert not tower_is_frozen(model.visual)
    with pytest.raises(ClipforgeError, match="cannot unlock"):
        lock_tower(model.visual, len(groups))


def test_a_training_step_changes_only_the_unlocked_parameters(resnet):
    _, path = resnet
    model = _model("resnet18", path)
    lock_tower(model.visual, 1)  # resnet18's layer4.1 (no trailing group: fc is gone)
    for p in model.text.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    model.train()
    ids = model.tokenize(["a", "b", "c", "d"])
    out = model(_pixels(4, 96, seed=2), ids)
    labels = torch.arange(4)
    logits = out.logits()
    ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2).backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trained = {"visual.head.weight", "visual.head.bias", "logit_scale"}
    assert trained <= changed
    assert any(k.startswith("visual.model.layer4.1.") and k.endswith("weight") for k in changed)
    frozen_bn_stats = {k for k in changed if k.startswith("visual.model.") and "layer4.1." not in k}
    assert not frozen_bn_stats  # frozen weights and frozen BatchNorms' running statistics never move
    assert not any(k.startswith("text.") for k in changed)


def test_checkpoint_saves_and_loads_with_the_timm_name_and_config(resnet, tmp_path):
    _, path = resnet
    model = _model("resnet18", path, head="mlp", head_hidden=48).eval()
    model.save_pretrained(tmp_path / "ckpt")
    back = load_model(str(tmp_path / "ckpt")).eval()
    assert back.config == model.config and back.config.vision.model == "resnet18"
    x = _pixels(2)
    with torch.no_grad():
        assert torch.equal(back.encode_image(x), model.encode_image(x))
    assert parameter_counts(back.config)["vision"] == sum(p.numel() for p in back.visual.parameters())


def test_vit_tokens_drop_the_class_token_and_weights_of_another_model_are_one_line(resnet):
    model = _model("vit_tiny_patch16_224", image_size=64).eval()
    with torch.no_grad():
        out = model.visual(_pixels(2, 64), return_tokens=True)
    assert out.tokens.shape == (2, 16, 24) and out.pooled.shape == (2, 24)
    with pytest.raises(ClipforgeError) as e:
        _model("mobilenetv3_small_050", resnet[1])
    assert "\n" not in str(e.value)


def test_the_onnx_image_graph_equals_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model("resnet18").eval()
    path = export_tower(model, "image", tmp_path / "image.onnx")
    x = _pixels(3)  # the graph's spatial size is the model's (224)
    got = ort.InferenceSession(str(path)).run(None, {"pixels": x.numpy()})[0]
    with torch.no_grad():
        want = model.visual(x).pooled.numpy()
    assert np.abs(got - want).max() <= 1e-5
