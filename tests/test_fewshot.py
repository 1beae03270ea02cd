"""Few-shot methods: each one learns on a small deterministic task (well above the zero-shot baseline, which a
random text tower leaves at chance), heads save and load, Tip-Adapter's formula and grid search, the shared
k-shot splits, and the protocol's records."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.adapt import FEWSHOT, SupportSet, load_head, sample_support
from clipforge.adapt.fewshot_heads import tip_logits
from clipforge.adapt.tip_adapter import search_alpha_beta
from clipforge.encode import Encoder, SourceFeatures
from clipforge.errors import UsageError
from clipforge.evaluate.fewshot_task import evaluate_fewshot
from clipforge.models import create_model

NAMES = ["cat", "dog", "car", "tree", "boat"]
C, D = len(NAMES), 64


def _clusters(n_per_class, seed):
    """Unit features around 5 fixed random class centres (nearest-centre accuracy ~1)."""
    mu = F.normalize(torch.randn(C, D, generator=torch.Generator().manual_seed(123)), dim=-1)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C).repeat_interleave(n_per_class)
    return F.normalize(mu[y] + 0.12 * torch.randn(len(y), D, generator=g), dim=-1), y


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Encoder.from_model(create_model("tiny").eval())


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    pool_x, pool_y = _clusters(20, seed=1)
    test_x, test_y = _clusters(30, seed=2)
    sup, val = sample_support(pool_y.numpy(), 4, seed=0, val_shots=4)
    support = SupportSet.from_features(pool_x[sup], pool_y[sup], NAMES, pool_x[val], pool_y[val])
    desc = tmp_path_factory.mktemp("gist") / "descriptions.json"
    desc.write_text(json.dumps({n: [f"a {n} with {w}" for w in ("stripes", "wheels", "leaves")] for n in NAMES}))
    return support, test_x, test_y, str(desc)


@pytest.fixture(scope="module")
def prompt_task(encoder):
    """Image features around the text features of each class name behind a secret 4-vector context: a task a
    learned context can solve, while the tiny random tower's plain prompts sit near chance on it."""
    from clipforge.adapt.coop import PromptLearner

    secret = PromptLearner(encoder.model, NAMES, 4, seed=99)
    with torch.no_grad():
        secret.ctx.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
        mu = secret()

    def draw(n, seed):
        y = torch.arange(C).repeat_interleave(n)
        noise = 0.03 * torch.randn(len(y), mu.shape[1], generator=torch.Generator().manual_seed(seed))
        return F.normalize(mu[y] + noise, dim=-1), y

    (px, py), (tx, ty) = draw(4, 1), draw(30, 2)
    return SupportSet.from_features(px, py, NAMES), tx, ty, None


FAST = {"zero-shot": {"templates": "photo"}, "linear-probe": {},
        "tip-adapter": {"templates": "photo", "search_steps": 20},
        "tip-adapter-f": {"templates": "photo", "search_steps": 20, "epochs": 10},
        "coop": {"n_ctx": 4, "epochs": 25, "lr": 0.02}, "gist": {"epochs": 20}}


def _fit(method, encoder, support, desc, **extra):
    opts = dict(FAST[method], **extra)
    if method == "gist":
        opts["descriptions"] = desc
    return FEWSHOT.create(method, **opts).fit(encoder, support, seed=0)


def _acc(head, x, y):
    return float((head.scores(x).argmax(-1) == y).float().mean())


def test_every_method_is_registered():
    assert set(FAST) == set(FEWSHOT.names())


@pytest.mark.parametrize("method", [m for m in FAST if m != "zero-shot"])
def test_method_learns_and_its_head_round_trips(method, encoder, task, prompt_task, tmp_path):
    support, test_x, test_y, desc = prompt_task if method == "coop" else task
    zero = _acc(_fit("zero-shot", encoder, support, desc), test_x, test_y)
    head = _fit(method, encoder, support, desc)
    acc = _acc(head, test_x, test_y)
    assert acc >= zero + 0.25 and acc >= 1 / C + 0.25, (method, acc, zero)
    head.save(tmp_path / "h")
    back = load_head(tmp_path / "h")
    assert back.classnames == NAMES
    assert torch.allclose(back.scores(test_x), head.scores(test_x), atol=1e-5)
    probs, idx = back.topk(test_x, 2)
    assert idx.shape == (len(test_x), 2) and torch.allclose(probs.sum(1) <= 1 + 1e-6, torch.ones(len(test_x)).bool())


@pytest.mark.slow
def test_coop_class_specific_context_learns(encoder, prompt_task):
    support, test_x, test_y, desc = prompt_task
    head = _fit("coop", encoder, support, desc, csc=True)
    assert head.extra["ctx"].shape == (C, 4, encoder.model.config.text.width)
    assert _acc(head, test_x, test_y) >= 1 / C + 0.35
    with pytest.raises(UsageError, match="context length"):
        _fit("coop", encoder, support, desc, n_ctx=40)


def test_tip_adapter_formula_and_grid_search(encoder, task):
    support, test_x, test_y, desc = task
    head = _fit("tip-adapter", encoder, support, desc)
    # scores == zero-shot + alpha * sum_j exp(-beta (1 - cos(f, k_j))) onehot_j, written out with numpy
    f, k = test_x.numpy().astype(np.float64), support.feats.numpy().astype(np.float64)
    want = 100 * f @ head.zs_weights.numpy().T + head.alpha * np.exp(-head.beta * (1 - f @ k.T)) @ np.eye(C)[
        support.labels.numpy()]
    np.testing.assert_allclose(head.scores(test_x).numpy(), want, rtol=1e-4, atol=1e-3)
    # the search returns a grid point with the best validation accuracy
    vx, vy = support.val_feats, support.val_labels
    a, b, acc = search_alpha_beta(vx, vy, head.zs_weights, support.feats, support.onehot(), alpha_max=5, beta_max=5,
                                  steps=6)
    alphas, betas = np.geomspace(0.1, 5, 6), np.linspace(0.1, 5, 6)
    best = max(float((tip_logits(vx, head.zs_weights, support.feats, support.onehot(), al, be, 100).argmax(-1) == vy)
                     .float().mean()) for al in alphas for be in betas)
    assert acc == pytest.approx(best)
    assert min(abs(a - alphas)) < 1e-4 and min(abs(b - betas)) < 1e-4


def test_support_splits_are_shared_disjoint_and_seeded():
    y = np.repeat(np.arange(4), 10)
    s1, v1 = sample_support(y, 3, seed=5, val_shots=2)
    s2, v2 = sample_support(y, 3, seed=5, val_shots=2)
    assert np.array_equal(s1, s2) and np.array_equal(v1, v2)
    assert not set(s1) & set(v1)
    assert np.bincount(y[s1]).tolist() == [3] * 4 and np.bincount(y[v1]).tolist() == [2] * 4
    assert not np.array_equal(s1, sample_support(y, 3, seed=6)[0])


def test_protocol_records(encoder):
    pool_x, pool_y = _clusters(12, seed=3)
    test_x, test_y = _clusters(10, seed=4)

    def sf(x, y):
        return SourceFeatures(x, [str(i) for i in range(len(y))], [[] for _ in y], y.tolist())

    parts = evaluate_fewshot(encoder, sf(pool_x, pool_y), sf(test_x, test_y), NAMES,
                             methods=["zero-shot", "tip-adapter"], shots=[1, 4], seeds=[0, 1], templates="photo",
                             search_steps=10)
    assert [(p["method"], p["k_shot"]) for p in parts] == [("zero-shot", 1), ("zero-shot", 4), ("tip-adapter", 1),
                                                          ("tip-adapter", 4)]
    zs = [p for p in parts if p["method"] == "zero-shot"]
    assert zs[0]["metrics"]["top1"] == zs[1]["metrics"]["top1"] and zs[0]["metrics"]["top1_std"] == 0
    tip4 = parts[-1]["metrics"]
    assert len(tip4["top1_per_seed"]) == 2 and tip4["top1"] == pytest.approx(np.mean(tip4["top1_per_seed"]))
    assert tip4["top1_std"] == pytest.approx(np.std(tip4["top1_per_seed"]))
    assert parts[-1]["config"]["val_shots"] == 4 and parts[-1]["config"]["search_steps"] == 10
    with pytest.raises(UsageError, match="`n_ctx` does not apply to the chosen methods"):
        evaluate_fewshot(encoder, sf(pool_x, pool_y), sf(test_x, test_y), NAMES, methods=["tip-adapter"],
                         shots=[1], seeds=[0], n_ctx=4)
    with pytest.raises(UsageError, match="'gist' needs `descriptions`"):
        evaluate_fewshot(encoder, sf(pool_x, pool_y), sf(test_x, test_y), NAMES, methods=["gist"], shots=[1],
                         seeds=[0])
