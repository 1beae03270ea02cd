"""Dense features and maps (issue 29): shapes and dtypes per tower, and a hand-built case per method.

The hand-built case: every tower's weights are set so that its features carry one thing, how bright a region
is (channel 0 passes brightness through every layer; the output projection maps it onto embedding axis 0, and
a constant onto axis 1), and the "text" is axis 0. On a dark canvas whose only bright region is an object off
the centre (not square, so a transposed grid is caught), each method's map must peak inside the object.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from clipforge.encode import Encoder
from clipforge.errors import UsageError
from clipforge.explain import explain, explain_vectors
from clipforge.models import create_model
from clipforge.models.dense import dense_features, gradcam_maps, resolve_dense_method
from clipforge.models.efficientnet import EfficientNetTower


def _effnet_tower(embed_dim=32):
    cfg = SimpleNamespace(variant="lite0", head="linear", head_hidden=0, image_size=128)
    return EfficientNetTower(cfg, embed_dim).eval()


def _brightness_convnet(tower: nn.Module, out: nn.Linear, pool=None) -> None:
    """Every conv passes channel 0 (the RGB mean for the stem) through its centre tap; BatchNorms are the
    identity; `out` maps channel 0 to axis 0 and adds 1 on axis 1; an attention pool attends uniformly."""
    with torch.no_grad():
        for m in tower.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                c = m.kernel_size[0] // 2
                if m.in_channels == 3:
                    m.weight[0, :, c, c] = 1 / 3
                else:
                    m.weight[0, 0, c, c] = 1.0
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1), m.bias.zero_(), m.running_mean.zero_(), m.running_var.fill_(1)
        if pool is not None:
            for lin in (pool.q_proj, pool.k_proj):
                lin.weight.zero_(), lin.bias.zero_()
            pool.v_proj.weight.copy_(torch.eye(pool.v_proj.in_features)), pool.v_proj.bias.zero_()
            pool.positional_embedding.zero_()
        out.weight.zero_()
        out.weight[0, 0] = 1.0
        out.bias.zero_()
        out.bias[1] = 1.0


def _brightness_vit(model) -> None:
    v = model.visual
    W = v.cfg.width
    with torch.no_grad():
        v.conv.weight.zero_()
        v.conv.weight[0] = 1.0 / v.conv.weight[0].numel()
        v.conv.weight[1] = -1.0 / v.conv.weight[0].numel()
        v.positional_embedding.zero_()
        v.positional_embedding[:, 2], v.positional_embedding[:, 3] = 1.0, -1.0  # a constant, kept by LayerNorm
        if v.class_embedding is not None:
            v.class_embedding.zero_()
        blocks = v.transformer.blocks
        for i, blk in enumerate(blocks):
            blk.mlp.proj.weight.zero_(), blk.mlp.proj.bias.zero_()
            blk.attn.qkv.weight.zero_(), blk.attn.qkv.bias.zero_()
            blk.attn.out.weight.zero_(), blk.attn.out.bias.zero_()
            if i == len(blocks) - 1:  # uniform attention: q = k = 0; values and output the identity
                blk.attn.qkv.weight[2 * W:] = torch.eye(W)
                blk.attn.out.weight.copy_(torch.eye(W))
        v.proj.weight.zero_()
        v.proj.weight[0, 0] = 1.0
        v.proj.weight[1, 2] = 1.0


def _canvas(size: int, box) -> torch.Tensor:
    """(1, 3, size, size): -1 everywhere, +1 inside box (top, left, bottom, right), in normalised units."""
    px = -torch.ones(1, 3, size, size)
    t, l, b, r = box
    px[..., t:b, l:r] = 1.0
    return px


def _peak_in(grid_map: torch.Tensor, size: int, box) -> bool:
    up = torch.nn.functional.interpolate(grid_map[None, None].float(), size=(size, size), mode="bilinear",
                                         align_corners=False)[0, 0]
    y, x = np.unravel_index(int(up.argmax()), up.shape)
    t, l, b, r = box
    return t <= y < b and l <= x < r


def _text(dim):
    t = torch.zeros(1, dim)
    t[0, 0] = 1.0
    return t


CASES = [  # (name, pool, input size, object box (top, left, bottom, right))
    ("vit-mean", "mean", 32, (4, 20, 12, 28)),
    ("vit-cls", "cls", 32, (20, 4, 28, 16)),
    ("resnet", None, 128, (32, 64, 64, 128)),
    pytest.param("efficientnet", None, 128, (64, 0, 128, 64), marks=pytest.mark.slow),  # a 3.4 M-param backbone
]


def _built(name, pool):
    if name.startswith("vit"):
        model = create_model("tiny", vision={"pool": pool}) if pool != "mean" else create_model("tiny")
        _brightness_vit(model.eval())
        return model, ("maskclip", "tokens")
    if name == "resnet":
        model = create_model("tiny-resnet").eval()
        _brightness_convnet(model.visual, model.visual.attnpool.c_proj, model.visual.attnpool)
        return model, ("maskclip",)
    tower = _effnet_tower()
    _brightness_convnet(tower.backbone, tower.head)
    return tower, ("tokens",)


@pytest.mark.parametrize("name,pool,size,box", CASES, ids=["vit-mean", "vit-cls", "resnet", "efficientnet"])
def test_every_method_peaks_on_the_only_bright_region(name, pool, size, box):
    model, dense_methods = _built(name, pool)
    px = _canvas(size, box)
    dim = 32 if name == "efficientnet" else model.config.embed_dim
    text = _text(dim)
    with torch.no_grad():
        for method in dense_methods:
            cells = dense_features(model, px, method)[0]  # (h, w, D)
            assert _peak_in(cells @ text[0], size, box), (name, method)
    cam = gradcam_maps(model, px, text)[0, 0]
    assert cam.max() > 0 and _peak_in(cam, size, box), (name, "gradcam")
    moved = (box[0], size - box[3], box[2], size - box[1])  # the object mirrored left-right: the peak follows
    with torch.no_grad():
        assert _peak_in(dense_features(model, _canvas(size, moved), dense_methods[0])[0] @ text[0], size, moved)


@pytest.mark.parametrize("name", ["tiny", "tiny-resnet", pytest.param("efficientnet", marks=pytest.mark.slow)])
def test_shapes_dtypes_and_grid_follow_the_input_size(name):
    model = _effnet_tower() if name == "efficientnet" else create_model(name).eval()
    for size in (64, 96):
        px = torch.randn(2, 3, size, size)
        stride = 4 if name == "tiny" else 32
        with torch.no_grad():
            d = dense_features(model, px)
        assert d.shape[:3] == (2, size // stride, size // stride) and d.dtype == torch.float32
        assert torch.allclose(d.norm(dim=-1), torch.ones(d.shape[:3]), atol=1e-5)
        cam = gradcam_maps(model, px, torch.randn(3, d.shape[-1]))
        assert cam.shape == (2, 3, size // stride, size // stride) and (cam >= 0).all()
    assert not any(p.grad is not None for p in model.parameters())  # Grad-CAM leaves the weights alone


def test_dense_paths_agree_with_the_towers_own_outputs():
    """At the tower's own size, `tokens` are the tower's projected patch tokens; ResNet cells are its tokens;
    EfficientNet cells average to the pooled embedding (a linear head)."""
    vit, res, eff = create_model("tiny").eval(), create_model("tiny-resnet").eval(), _effnet_tower()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(dense_features(vit, px, "tokens", normalize=False).flatten(1, 2),
                              vit.visual(px, return_tokens=True).tokens, atol=1e-5)
        assert not torch.allclose(dense_features(vit, px, "maskclip"), dense_features(vit, px, "tokens"))
        assert torch.allclose(dense_features(res, px, normalize=False).flatten(1, 2),
                              res.visual(px, return_tokens=True).tokens, atol=1e-5)
        big = torch.randn(2, 3, 128, 128)
        assert torch.allclose(dense_features(eff, big, normalize=False).mean(dim=(1, 2)), eff(big).pooled, atol=1e-4)


def test_methods_a_tower_lacks_are_refused_in_one_line():
    with pytest.raises(UsageError, match="not offered by a ResNetTower"):
        resolve_dense_method(create_model("tiny-resnet"), "tokens")
    with pytest.raises(UsageError, match="unknown dense `method`"):
        resolve_dense_method(create_model("tiny"), "attention")
    with pytest.raises(UsageError, match="multiples of 4"):
        dense_features(create_model("tiny"), torch.randn(1, 3, 30, 32))


def test_encoder_and_explain_return_arrays_for_each_text(tiny_model, rgb_image):
    enc = Encoder.from_model(tiny_model)
    from clipforge.encode.dense import encode_dense
    feats = encode_dense(enc, [rgb_image, rgb_image], size=64)
    assert feats.shape == (2, 16, 16, tiny_model.config.embed_dim) and feats.dtype == torch.float32
    for method in ("auto", "tokens", "gradcam"):
        ex = explain(enc, rgb_image, ["a red square", "a dog"], method=method)
        assert ex.maps.shape == (2, 8, 8) and ex.maps.dtype == np.float32
        assert ex.upsampled().shape == (2, rgb_image.height, rgb_image.width)
        assert ex.method == ("maskclip" if method == "auto" else method)
        want = enc.encode_images([rgb_image]) @ enc.encode_texts(["a red square", "a dog"]).T
        assert np.allclose(ex.scores, want.numpy()[0], atol=1e-5)
    with pytest.raises(UsageError, match="`max_texts` is 2"):
        explain(enc, rgb_image, ["a", "b", "c"], max_texts=2)
    with pytest.raises(UsageError, match="empty text"):
        explain(enc, rgb_image, ["a", " "])
    with pytest.raises(UsageError, match="one label per query vector"):
        explain_vectors(enc, [rgb_image], np.zeros((2, 5)), ["a", "b"])


def test_dense_needs_the_torch_engine(tiny_model, rgb_image):
    from clipforge.encode.dense import encode_dense
    fake = SimpleNamespace(engine=SimpleNamespace(name="onnx"), model=tiny_model)
    with pytest.raises(UsageError, match="need `engine` torch; onnx"):
        encode_dense(fake, [rgb_image])
