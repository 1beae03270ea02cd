"""Gradient caching gives the same parameter gradients as backprop through the whole batch at once."""
import copy
import math
import warnings

import pytest
import torch

from clipforge.errors import UsageError
from clipforge.losses import get_loss
from clipforge.losses.gradcache import BatchNormSubBatchWarning, gradcache_step
from clipforge.models import create_model
from clipforge.models.output import CLIPOutput
from conftest import StandInTwoTower


def DropoutTwoTower(p=0.0, bias=True):
    return StandInTwoTower(hidden=32, dropout=p, logit_scale=math.log(1 / 0.07), logit_bias=-5.0 if bias else None)


def _data(n=13):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, 20, (n, 4), generator=g)


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, rtol=1e-5, atol=1e-7):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("loss_name,kwargs", [("clip", {}), ("clip", {"chunk_size": 4}), ("siglip", {}),
                                              ("align", {})])
@pytest.mark.parametrize("sub_batch", [1, 5, 13, 64])
def test_gradcache_equals_direct_full_batch(loss_name, kwargs, sub_batch):
    model = DropoutTwoTower(p=0.0, bias=loss_name == "siglip").double()
    pixels, tokens = _data()
    pixels = pixels.double()
    loss = get_loss(loss_name, **kwargs)
    direct = loss(model(pixels, tokens)).total
    direct.backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    out = gradcache_step(model, pixels, tokens, loss, sub_batch)
    assert not out.total.requires_grad
    torch.testing.assert_close(out.total, direct.detach(), rtol=1e-12, atol=0)
    _assert_same(_grads(model), ref, rtol=1e-10, atol=1e-13)


def test_gradcache_replays_dropout_rng():
    """With dropout, gradcache equals running the same sub-batches with autograd in one graph (same RNG
    draws), and leaves the global RNG where that run leaves it."""
    model = DropoutTwoTower(p=0.3)
    pixels, tokens = _data()
    loss, sub = get_loss("siglip"), 4

    torch.manual_seed(123)
    parts = [(model.encode_image(pixels[s:s + sub]), model.encode_text(tokens[s:s + sub]))
             for s in range(0, len(pixels), sub)]
    out = CLIPOutput(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                     model.logit_scale.exp(), model.logit_bias)
    direct = loss(out).total
    direct.backward()
    rng_after_direct = torch.get_rng_state()
    ref = _grads(model)

    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    got = gradcache_step(model, pixels, tokens, loss, sub)
    assert torch.equal(torch.get_rng_state(), rng_after_direct)
    torch.testing.assert_close(got.total, direct.detach(), rtol=1e-6, atol=0)
    _assert_same(_grads(model), ref)
    # Without the replay the masks would differ: a different seed gives different gradients.
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    gradcache_step(model, pixels, tokens, loss, sub)
    assert not torch.allclose(_grads(model)["img.1.weight"], ref["img.1.weight"])


def test_gradcache_with_frozen_image_tower():
    """LiT: the locked tower gets no gradient, the other one the full-batch gradient."""
    model = DropoutTwoTower(bias=False).double()
    for p in model.img.parameters():
        p.requires_grad_(False)
    pixels, tokens = _data()
    pixels = pixels.double()
    loss = get_loss("clip")
    loss(model(pixels, tokens)).total.backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    gradcache_step(model, pixels, tokens, loss, 3)
    got = _grads(model)
    assert not any(k.startswith("img.") for k in got)
    _assert_same(got, ref, rtol=1e-10, atol=1e-13)


def test_gradcache_tiny_model():
    model = create_model("tiny").double()
    n = 12
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 1024, (n, model.config.text.context_length), generator=g)
    loss = get_loss("clip", chunk_size=5)
    direct = loss(model(pixels, tokens)).total
    direct.backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    got = gradcache_step(model, pixels, tokens, loss, 5)
    torch.testing.assert_close(got.total, direct.detach(), rtol=1e-12, atol=0)
    _assert_same(_grads(model), ref, rtol=1e-9, atol=1e-12)


def test_gradcache_rejects_bad_arguments():
    model = DropoutTwoTower()
    pixels, tokens = _data()
    with pytest.raises(UsageError, match="sub_batch"):
        gradcache_step(model, pixels, tokens, get_loss("clip"), 0)
    with pytest.raises(UsageError, match="tokens"):
        gradcache_step(model, pixels, tokens[:5], get_loss("clip"), 4)


def _resnet_batch(model, n=12):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64),
            torch.randint(1, 1024, (n, model.config.text.context_length), generator=g))


def _norm_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_gradcache_on_train_mode_batchnorm_warns_and_updates_statistics_once_per_sub_batch():
    """tiny-resnet in train mode: sub-batch statistics differ from the batch's, so the step is not the full
    batch's: a warning says so. The running statistics see each sub-batch once, as if the sub-batches had been
    the batches (the no-grad pass used to advance every counter a second time)."""
    model = create_model("tiny-resnet").double().train()
    pixels, tokens = _resnet_batch(model)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for s in range(0, 12, 4):
            reference.encode_image(pixels[s:s + 4])
    with pytest.warns(BatchNormSubBatchWarning, match="19 BatchNorm layers in train mode .*sub-batch of 4"):
        gradcache_step(model, pixels, tokens, get_loss("clip"), 4)
    got, want = _norm_buffers(model), _norm_buffers(reference)
    assert len(got) == 57 and all(int(v) == 3 for k, v in got.items() if k.endswith("num_batches_tracked"))
    _assert_same(got, want, rtol=1e-12, atol=1e-14)


def test_gradcache_is_exact_on_frozen_batchnorm():
    """Frozen BatchNorm (its parameters locked) runs in eval mode even in a training model: a fixed affine map,
    so gradient caching gives the full-batch gradient of every convolution through it, without a warning, and
    leaves the statistics alone."""
    model = create_model("tiny-resnet").double()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.requires_grad_(False)
    model.train()
    assert model.training and not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    pixels, tokens = _resnet_batch(model)
    before = _norm_buffers(model)
    loss = get_loss("clip")
    direct = loss(model(pixels, tokens)).total
    direct.backward()
    ref = _grads(model)
    assert "visual.stem.0.weight" in ref
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchNormSubBatchWarning)
        got = gradcache_step(model, pixels, tokens, loss, 5)
    torch.testing.assert_close(got.total, direct.detach(), rtol=1e-12, atol=0)
    _assert_same(_grads(model), ref, rtol=1e-9, atol=1e-12)
    _assert_same(_norm_buffers(model), before, rtol=0, atol=0)
