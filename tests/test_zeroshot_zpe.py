"""ZPE prompt weighting: formula, debiasing, MAD selection, and a harmful prompt on synthetic embeddings."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.metrics.classification import topk_accuracy
from clipforge.zeroshot.zpe import (
    build_zpe_classifier,
    mad_select,
    weights_from_scores,
    zpe_scores,
    zpe_weights,
    zpe_weights_from_features,
)
from conftest import FakeTextEncoder


def _harmful_case(seed):
    """3 good prompts (class vectors near the class means) and 1 harmful one (mostly noise)."""
    g = torch.Generator().manual_seed(seed)
    C, D, N, R = 10, 64, 500, 300
    mu = F.normalize(torch.randn(C, D, generator=g), dim=-1)
    y = torch.randint(0, C, (N,), generator=g)
    img = F.normalize(mu[y] + 2.7 * torch.randn(N, D, generator=g) / D**0.5, dim=-1)
    ref = F.normalize(torch.randn(R, D, generator=g), dim=-1)  # unlabelled reference pool
    good = [F.normalize(mu + 0.9 * torch.randn(C, D, generator=g) / D**0.5, dim=-1) for _ in range(3)]
    bad = F.normalize(0.2 * mu + 1.5 * torch.randn(C, D, generator=g) / D**0.5, dim=-1)
    return img, ref, y, torch.stack(good + [bad]).double()  # e: (P, C, D)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_harmful_prompt_gets_lowest_weight_and_accuracy_improves(seed):
    img, ref, y, e = _harmful_case(seed)
    w = zpe_weights_from_features(img, ref, e)
    assert int(w.argmin()) == 3 and float(w[3]) < 0.5 * float(w[:3].min())
    assert float(w.sum()) == pytest.approx(1.0)
    mean_head = F.normalize(e.mean(0), dim=-1)
    zpe_head = torch.einsum("p,pcd->cd", w, e)
    acc_mean = topk_accuracy(img.double() @ mean_head.T, y, ks=(1,))["top1"]
    acc_zpe = topk_accuracy(img.double() @ zpe_head.T, y, ks=(1,))["top1"]
    assert acc_zpe > acc_mean + 0.01


def test_blocked_features_equal_logit_formula():
    img, ref, _, e = _harmful_case(3)
    l_test = 100.0 * torch.einsum("nd,pcd->npc", img.double(), e)  # (N, P, C), the formula verbatim
    l_ref = 100.0 * torch.einsum("nd,pcd->npc", ref.double(), e)
    bias = 0.5 * (l_test.mean(0) + l_ref.mean(0))
    s = (l_test - bias).amax(-1).mean(0)
    torch.testing.assert_close(zpe_scores(l_test, l_ref), s)
    torch.testing.assert_close(zpe_weights(l_test, l_ref), s.softmax(0))
    w_blocked = zpe_weights_from_features(img, ref, e, max_block_elems=100)  # 2 images per block
    torch.testing.assert_close(w_blocked, s.softmax(0))


def test_debiasing_demotes_a_prompt_biased_to_one_class():
    n, c = 40, 4
    y = np.arange(n) % c
    l = np.zeros((n, 2, c))
    l[np.arange(n), 0, y] = 5.0  # prompt 0: confident on the true class
    l[:, 1, 0] = 8.0  # prompt 1: always votes class 0 (a biased prompt) ...
    l[np.arange(n), 1, y] += 1.0  # ... with a weak true-class signal
    assert l.max(-1).mean(0)[1] > l.max(-1).mean(0)[0]  # raw confidence would prefer prompt 1
    s = zpe_scores(l, l)
    assert float(s[0]) == pytest.approx(5.0 - 5.0 / c)  # 5 minus its per-class mean 5/4
    assert float(s[1]) < float(s[0])
    assert float(zpe_weights(l)[0]) > 0.9


def test_mad_selection():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])  # median 3, MAD 1
    assert mad_select(s, 0.5).tolist() == [False, False, False, True, True]
    assert mad_select(s, 2.0).tolist() == [False, False, False, False, True]
    assert mad_select(s, 100.0).tolist() == [False, False, False, False, True]  # best kept
    assert mad_select(torch.ones(4), 0.5).all()  # MAD 0: keep all
    w = weights_from_scores(s, mad_threshold=0.5)
    assert w[:3].sum() == 0 and torch.allclose(w[3:], torch.tensor([4.0, 10.0]).double().softmax(0))


def test_build_zpe_head_logits_are_weighted_sum():
    enc = FakeTextEncoder(dim=16)
    classes, templates = ["cat", "dog", "bird"], ["a photo of a {c}.", "art of the {c}.", "a {c} toy."]
    img = F.normalize(torch.randn(20, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    head = build_zpe_classifier(enc, classes, img, ref_feats=img[:5], templates=templates)
    w = torch.tensor(head.meta["prompt_weights"])
    e = torch.stack([enc([t.replace("{c}", c) for c in classes]) for t in templates])  # (P, C, D)
    expected = 100.0 * torch.einsum("p,npc->nc", w, torch.einsum("nd,pcd->npc", img, e))
    torch.testing.assert_close(head.logits(img), expected, rtol=1e-5, atol=1e-4)
