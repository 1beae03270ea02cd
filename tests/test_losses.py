"""Single-process tests of the contrastive losses: golden numpy references, chunked == dense, registry."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.errors import UsageError
from clipforge.losses import (LossOutput, align_loss, clamp_logit_scale_, clip_loss, get_loss, list_losses,
                              register_loss, siglip_loss)
from clipforge.losses.chunked import block_cross_entropy, block_softplus_sum
from clipforge.models.output import CLIPOutput


def _feats(n=37, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    # Correlated text so positives score higher than negatives, as in training.
    txt = F.normalize(img + 0.7 * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return img, txt


def _np_lse(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _np_clip(img, txt, s, eps=0.0):
    """Brute force: softmax CE against a (1−ε)·one-hot + ε/N target, both directions."""
    logits = s * img @ txt.T
    n = logits.shape[0]
    target = (1 - eps) * np.eye(n) + eps / n
    i2t = -(target * (logits - _np_lse(logits, 1)[:, None])).sum(1).mean()
    t2i = -(target * (logits.T - _np_lse(logits.T, 1)[:, None])).sum(1).mean()
    return (i2t + t2i) / 2


def _np_siglip(img, txt, s, b):
    """The paper's formula pair by pair: −(1/N) Σ_ij log σ(z_ij (s⟨x_i,y_j⟩ + b))."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            u = z * (s * float(img[i] @ txt[j]) + b)
            total += -math.log(1.0 / (1.0 + math.exp(-u)))
    return total / n


def test_clip_matches_numpy_and_two_line_reference():
    img, txt = _feats()
    s = torch.tensor(14.3, dtype=torch.float64)
    got = clip_loss(img, txt, s)
    # transformers' clip_loss: (CE(sim) + CE(sim.T)) / 2 with the diagonal as labels.
    sim = s * img @ txt.t()
    labels = torch.arange(len(img))
    ref = (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2
    assert torch.allclose(got, ref, rtol=1e-12)
    assert got.item() == pytest.approx(_np_clip(img.numpy(), txt.numpy(), 14.3), rel=1e-12)


def test_siglip_matches_pairwise_formula():
    img, txt = _feats(n=12)
    got = siglip_loss(img, txt, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64))
    assert got.item() == pytest.approx(_np_siglip(img.numpy(), txt.numpy(), 10.0, -10.0), rel=1e-12)
    no_bias = siglip_loss(img, txt, torch.tensor(3.0, dtype=torch.float64), None)
    assert no_bias.item() == pytest.approx(_np_siglip(img.numpy(), txt.numpy(), 3.0, 0.0), rel=1e-12)


def test_align_matches_label_smoothed_reference():
    img, txt = _feats()
    got = align_loss(img, txt, torch.tensor(2.5, dtype=torch.float64), label_smoothing=0.1)
    assert got.item() == pytest.approx(_np_clip(img.numpy(), txt.numpy(), 2.5, eps=0.1), rel=1e-12)


def _values_and_grads(fn, img, txt, scale, bias):
    leaves = [t.clone().requires_grad_() for t in (img, txt, scale, bias)]
    loss = fn(*leaves)
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("chunk", [1, 7, 37, 100])
@pytest.mark.parametrize("name", ["clip", "siglip", "align"])
def test_chunked_equals_dense_values_and_gradients(name, chunk):
    img, txt = _feats(n=37)
    scale, bias = torch.tensor(9.0, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64)
    fns = {
        "clip": lambda a, b, s, c, k: clip_loss(a, b, s, chunk_size=k) + 0 * c,
        "siglip": lambda a, b, s, c, k: siglip_loss(a, b, s, c, chunk_size=k),
        "align": lambda a, b, s, c, k: align_loss(a, b, s, chunk_size=k) + 0 * c,
    }
    dense = _values_and_grads(lambda a, b, s, c: fns[name](a, b, s, c, None), img, txt, scale, bias)
    chunked = _values_and_grads(lambda a, b, s, c: fns[name](a, b, s, c, chunk), img, txt, scale, bias)
    for d, c in zip(dense, chunked):
        torch.testing.assert_close(c, d, rtol=1e-10, atol=1e-12)


def test_chunked_float32_within_1e6():
    img, txt = _feats(n=300, d=32, dtype=torch.float32)
    s = torch.tensor(100.0)
    a = clip_loss(img, txt, s, chunk_size=64)
    b = clip_loss(img, txt, s)
    assert abs(a.item() - b.item()) <= 1e-6 * abs(b.item())


def test_block_functions_pass_gradcheck():
    img, txt = _feats(n=9, d=4)
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: block_cross_entropy(a, b, s, 4), (a, b, s))
    assert torch.autograd.gradcheck(lambda a, b, s: block_cross_entropy(a, b, s, 2, want_cols=False)[0],
                                    (a, b, s))
    assert torch.autograd.gradcheck(lambda a, b, s: block_cross_entropy(a[:4], b, s, 3, 5, want_cols=False)[0],
                                    (a, b, s))
    assert torch.autograd.gradcheck(lambda a, b, s, c: block_softplus_sum(a, b, s, c, 4), (a, b, s, bias))
    assert torch.autograd.gradcheck(lambda a, b, s, c: block_softplus_sum(a, b, s, c, 4, 0), (a, b, s, bias))


@pytest.mark.parametrize("name", ["clip", "siglip", "align"])
def test_chunked_never_saves_an_n_by_n_tensor(name):
    n, d, chunk = 512, 8, 16
    img, txt = _feats(n=n, d=d, dtype=torch.float32)
    img.requires_grad_()
    txt.requires_grad_()
    out = CLIPOutput(img, txt, torch.tensor(10.0, requires_grad=True), torch.tensor(-5.0, requires_grad=True))
    biggest = []

    def pack(t):
        biggest.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = get_loss(name, chunk_size=chunk)(out).total
    loss.backward()
    assert max(biggest) <= max(n * d, chunk * n) < n * n
    # The dense path does keep N×N (sanity check that the hook sees it).
    biggest.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        get_loss(name)(out)
    assert max(biggest) >= n * n


def test_module_wrappers_match_pure_functions():
    img, txt = _feats()
    s, b = torch.tensor(7.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    out = CLIPOutput(img, txt, s, b)
    res = get_loss("clip")(out)
    assert isinstance(res, LossOutput)
    assert torch.allclose(res.total, clip_loss(img, txt, s))
    assert set(res.parts) == {"clip", "image_to_text", "text_to_image"}
    assert torch.allclose((res.parts["image_to_text"] + res.parts["text_to_image"]) / 2, res.total)
    assert torch.allclose(get_loss("siglip", chunk_size=5)(out).total, siglip_loss(img, txt, s, b))
    assert torch.allclose(get_loss("align", label_smoothing=0.2)(out).total,
                          align_loss(img, txt, s, label_smoothing=0.2))


def test_registry_lists_and_rejects():
    assert {"clip", "siglip", "align"} <= set(list_losses())
    with pytest.raises(UsageError, match="clip") as e:
        get_loss("clipp")
    assert "siglip" in str(e.value)
    with pytest.raises(UsageError, match="chunk_size"):
        get_loss("clip", chunksize=4)
    with pytest.raises(UsageError, match="ring"):
        get_loss("siglip", mode="star")


def test_register_custom_loss():
    @register_loss("test-mse-pairs")
    class MSEPairs(torch.nn.Module):
        def forward(self, output, batch=None):
            total = ((output.image_embeds - output.text_embeds) ** 2).mean()
            return LossOutput(total, {"mse": total.detach()})

    assert "test-mse-pairs" in list_losses()
    assert isinstance(get_loss("test-mse-pairs"), MSEPairs)
    with pytest.raises(UsageError, match="already registered"):
        register_loss("clip")(MSEPairs)


def test_clamp_logit_scale():
    m = torch.nn.Module()
    m.logit_scale = torch.nn.Parameter(torch.tensor(7.0))
    clamp_logit_scale_(m)
    assert m.logit_scale.item() == pytest.approx(math.log(100))
    m.logit_scale.data.fill_(2.0)
    clamp_logit_scale_(m)
    assert m.logit_scale.item() == 2.0


def test_chunked_ignores_autocast_and_stays_float32():
    img, txt = _feats(n=64, d=16, dtype=torch.float32)
    s = torch.tensor(50.0)
    ref = clip_loss(img, txt, s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = clip_loss(img, txt, s, chunk_size=16)
        got_sig = siglip_loss(img, txt, s, torch.tensor(-10.0), chunk_size=16)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= 1e-6 * ref.item()
    assert got_sig.item() == pytest.approx(siglip_loss(img, txt, s, torch.tensor(-10.0)).item(), rel=1e-6)


def _near_zero_feats(n=128, d=32, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + noise * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return img.float(), txt.float()


def test_chunked_clip_float32_near_zero_loss_keeps_relative_precision():
    """Issue #11: at logit scale 100 near zero loss, lse − positive computed apart lost every digit. The
    chunked path subtracts the positive inside the exponentials; the dense path (F.cross_entropy, open_clip's
    formula) is the contrast. Ground truth: the same loss in float64 on the same float32 features."""
    img, txt = _near_zero_feats()
    s = torch.tensor(100.0)
    truth = clip_loss(img.double(), txt.double(), s.double(), chunk_size=32).item()
    assert 0 < truth < 1e-6  # the regime of a trained model's easy batches
    dense_err = abs(clip_loss(img, txt, s).item() - truth) / truth
    chunked_err = abs(clip_loss(img, txt, s, chunk_size=32, dot_precision="float32").item() - truth) / truth
    assert chunked_err < 2e-5 and chunked_err < dense_err / 100
    # Float64 block products (the default on CPUs): the float32 matmul's rounding is gone as well.
    got64 = clip_loss(img, txt, s, chunk_size=32, dot_precision="float64")
    assert got64.dtype == torch.float32
    assert abs(got64.item() - truth) / truth <= 1e-6


@pytest.mark.parametrize("noise", [0.05, 0.1, 0.15])
def test_chunked_clip_float64_dots_within_1e6_near_zero_loss(noise):
    """The #11 acceptance: ≤ 1e-6 relative error near zero loss at logit scale 100, value and gradient,
    over several seeds; `auto` is float64 on a CPU."""
    from clipforge.losses.chunked import resolve_dot_precision

    assert resolve_dot_precision("auto", "cpu") == torch.float64
    s = torch.tensor(100.0)
    for seed in range(3):
        img, txt = _near_zero_feats(noise=noise, seed=seed)

        def value_grad(a, b, precision):
            a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
            v = clip_loss(a, b, s.to(a.dtype), chunk_size=32, dot_precision=precision)
            v.backward()
            return v.item(), torch.cat([a.grad.flatten(), b.grad.flatten()]).double()

        truth, g64 = value_grad(img.double(), txt.double(), "float64")
        got, g32 = value_grad(img, txt, "auto")
        assert abs(got - truth) <= 1e-6 * truth
        assert ((g32 - g64).norm() / g64.norm()).item() <= 1e-6
        assert get_loss("clip", chunk_size=32)(CLIPOutput(img, txt, s)).total.item() == pytest.approx(got, rel=0)


def test_functional_and_registered_losses_share_the_accurate_default():
    """Issue #31: `clip_loss(..., chunk_size=...)` defaulted to float32 blocks (1.5e-5 relative near zero loss,
    141 of 180 cases over 1e-6) while `CLIPLoss` defaulted to "auto". One default now: every case within 1e-6."""
    s = torch.tensor(100.0)
    worst = 0.0
    for seed in range(20):
        for noise in (0.05, 0.1, 0.15):
            img, txt = _near_zero_feats(noise=noise, seed=seed)
            truth = clip_loss(img.double(), txt.double(), s.double(), chunk_size=32).item()
            got = clip_loss(img, txt, s, chunk_size=32)
            assert got.item() == get_loss("clip", chunk_size=32)(CLIPOutput(img, txt, s)).total.item()
            worst = max(worst, abs(got.item() - truth) / truth)
    assert worst <= 1e-6
    img, txt = _near_zero_feats(noise=0.1, seed=1)
    f32 = clip_loss(img, txt, s, chunk_size=32, dot_precision="float32").item()  # still there when asked
    truth = clip_loss(img.double(), txt.double(), s.double(), chunk_size=32).item()
    assert abs(f32 - truth) / truth > worst


def test_chunked_clip_float32_gradients_near_zero_loss():
    img, txt = _near_zero_feats(noise=0.12)
    s = torch.tensor(100.0)

    def grads(a, b, chunk):
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        clip_loss(a, b, s.to(a.dtype), chunk_size=chunk, dot_precision="float32").backward()
        return torch.cat([a.grad.flatten(), b.grad.flatten()]).double()

    truth = grads(img.double(), txt.double(), 32)
    rel = lambda g: ((g - truth).norm() / truth.norm()).item()  # noqa: E731
    assert rel(grads(img, txt, 32)) < 2e-5
    assert rel(grads(img, txt, 32)) < rel(grads(img, txt, None))


def test_siglip_exact_above_logit_20_and_near_zero_loss():
    """Dense and chunked SigLIP sum −log σ(z·x) term by term (no softplus threshold at 20, no softplus(x) − x
    for positives): value and bias gradient match an independent float64 evaluation of every pair."""
    img, txt = _feats(n=10, d=4)
    txt = img.clone()  # positives at cosine 1: with s = 40, b = −10 their logits are 30
    s, b = 40.0, -10.0
    logits = (s * img @ txt.t() + b).numpy()
    z = 2 * np.eye(10) - 1
    ref = sum(math.log1p(math.exp(-u)) if u > 0 else -u + math.log1p(math.exp(u)) for u in (z * logits).ravel()) / 10
    ref_db = sum(-zz / (1 + math.exp(zz * u)) for zz, u in zip(z.ravel(), logits.ravel())) / 10  # d/db
    for chunk in (None, 3):
        bias = torch.tensor(b, dtype=torch.float64, requires_grad=True)
        got = siglip_loss(img, txt, torch.tensor(s, dtype=torch.float64), bias, chunk_size=chunk)
        got.backward()
        assert got.item() == pytest.approx(ref, rel=1e-12)
        assert bias.grad.item() == pytest.approx(ref_db, rel=1e-12)
