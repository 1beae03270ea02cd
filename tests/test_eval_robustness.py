"""The robustness task: pixel-space PGD / FGSM through the model's normalisation, corruptions, targeted attack."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.cli import main
from clipforge.data.corruptions import CORRUPTIONS, corrupt
from clipforge.data.sources import open_source
from clipforge.encode import Encoder
from clipforge.errors import UsageError
from clipforge.evaluate import run_eval
from clipforge.evaluate.attacks import PixelSpace, fgsm, pgd
from clipforge.evaluate.robustness import eps_name, evaluate_robustness, parse_epsilons
from clipforge.models import create_model
from clipforge.zeroshot.zeroshot_head import build_classifier, model_text_encoder

CKPT_SEED = 5


@pytest.fixture(scope="module")
def setting(digits_demo):
    torch.manual_seed(CKPT_SEED)
    model = create_model("tiny").eval()
    src = open_source(f"imagefolder:{digits_demo['val_dir']}")
    idx = list(range(0, len(src), len(src) // 8))[:8]  # spread over the classes
    x = torch.stack([model.preprocess(src[i].image) for i in idx])
    y = torch.tensor([src[i].label for i in idx])
    head = build_classifier(model_text_encoder(model), [f"digit {c}" for c in range(10)], ["a photo of {}."])
    return model, PixelSpace.of(model.preprocess), x, y, head


def _loss(model, space, head, y):
    def loss(p):
        f = F.normalize(model.encode_image(space.normalise(p)), dim=-1)
        return F.cross_entropy(head.logit_scale * f @ head.weights.T, y, reduction="none")
    return loss


def test_pixels_round_trip_through_the_normalisation(setting):
    model, space, x, _, _ = setting
    p = space.to_pixels(x)
    assert p.min() >= 0 and p.max() <= 1
    assert torch.allclose(space.normalise(p), x, atol=1e-5)


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_the_attack_stays_in_the_ball_and_raises_the_loss(setting, attack):
    model, space, x, y, head = setting
    loss = _loss(model, space, head, y)
    p, eps = space.to_pixels(x), 4 / 255
    adv = pgd(loss, p, eps, steps=3, generator=torch.Generator().manual_seed(0)) if attack == "pgd" else fgsm(loss, p, eps)
    assert (adv - p).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - p).abs().max() > eps / 2  # it moved
    with torch.no_grad():
        before, after = loss(p), loss(adv)
    assert after.mean() > before.mean() + 1e-3  # ascending, through the normalisation
    assert (after >= before - 1e-4).float().mean() >= 0.75


def test_epsilons_parse_and_are_named():
    assert parse_epsilons("4/255,0,1/255") == [0.0, 1 / 255, 4 / 255]
    assert eps_name(4 / 255) == "4/255" and eps_name(0.01) == "0.01"
    with pytest.raises(UsageError, match="epsilons"):
        parse_epsilons("-1")


@pytest.mark.slow
def test_clean_accuracy_is_zeroshot_classifications(digits_demo, tiny_checkpoint):
    ckpt = tiny_checkpoint(CKPT_SEED)
    val, t = f"imagefolder:{digits_demo['val_dir']}", digits_demo["templates_unseen"]
    zs = run_eval(ckpt, "zeroshot-classification", val, templates=t)
    rb = run_eval(ckpt, "robustness", val, templates=t, attack="none")
    n = rb["metrics"]["n"]
    assert n == zs["metrics"]["n"]
    assert abs(rb["metrics"]["clean_top1"] - zs["metrics"]["top1"]) * n <= 1  # float round trip: at most 1 image


def test_attacks_need_the_torch_engine(digits_demo):
    fake = Encoder(SimpleNamespace(name="onnx", model=None, preprocess=None, tokenizer=None, embed_dim=8))
    with pytest.raises(UsageError, match="torch engine"):
        evaluate_robustness(fake, open_source(f"imagefolder:{digits_demo['val_dir']}"))


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_changes_the_image_more_at_higher_severity(name, rgb_image):
    x = np.asarray(rgb_image, dtype=np.float32) / 255
    one, five = (corrupt(x, name, s, np.random.default_rng(0)) for s in (1, 5))
    assert one.shape == x.shape and one.dtype == np.float32 and 0 <= five.min() and five.max() <= 1
    d1, d5 = np.abs(one - x).mean(), np.abs(five - x).mean()
    assert 0 < d1 < d5, (d1, d5)
    assert np.array_equal(corrupt(x, name, 3, np.random.default_rng(1)), corrupt(x, name, 3, np.random.default_rng(1)))


def test_the_task_from_the_cli(digits_demo, tiny_checkpoint, tmp_path):
    out = tmp_path / "r.jsonl"
    assert main(["eval", "-m", tiny_checkpoint(CKPT_SEED), "--task", "robustness", "-d",
                 f"imagefolder:{digits_demo['val_dir']}", "--templates", digits_demo["templates_unseen"],
                 "--attack", "fgsm", "--epsilons", "8/255", "--corruptions", "contrast,jpeg", "--severities", "1,5",
                 "--target-text", "a photo of a cat.", "--attack-limit", "8", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    m = rec["metrics"]
    assert m["n"] == 8 and rec["config"]["epsilons"] == ["8/255"]
    assert {"clean_top1", "robust_top1@8/255", "corruption_top1/contrast@5", "corruption_top1/jpeg",
            "mean_corruption_top1", "target_match@8/255"} <= set(m)
    assert m["mean_corruption_top1"] == pytest.approx(np.mean([m["corruption_top1/contrast"], m["corruption_top1/jpeg"]]))
    # the targeted attack pulls the images toward the text
    assert m["target_similarity@8/255"] > m["target_similarity@0/255"]
