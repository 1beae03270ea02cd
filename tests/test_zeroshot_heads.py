"""Zero-shot heads: mean ensembles, CuPL descriptions, save/load."""
import json

import pytest
import torch
import torch.nn.functional as F

from clipforge.errors import ClipforgeError, UsageError
from clipforge.zeroshot.cupl import load_descriptions
from clipforge.zeroshot.zeroshot_head import ZeroShotHead, build_classifier
from conftest import FakeTextEncoder



CLASSES = ["cat", "dog", "red car"]
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}.", "itap of my {c}."]


def _brute(enc, texts):  # normalise(mean of normalised embeddings), one text at a time
    return F.normalize(torch.stack([F.normalize(enc([t])[0], dim=-1) for t in texts]).mean(0), dim=-1)


def test_mean_ensemble_matches_brute_force_and_batching():
    enc = FakeTextEncoder()
    head = build_classifier(enc, CLASSES, TEMPLATES, batch_size=4)
    assert max(enc.calls) <= 4 and sum(enc.calls) == 9
    for i, c in enumerate(CLASSES):
        ref = _brute(enc, [t.replace("{c}", c) for t in TEMPLATES])
        torch.testing.assert_close(head.weights[i], ref)
    head2 = build_classifier(FakeTextEncoder(), CLASSES, TEMPLATES, batch_size=1000)
    torch.testing.assert_close(head.weights, head2.weights)
    assert head.meta["method"] == "mean" and head.meta["n_templates"] == 3


def test_many_classes_times_templates_is_batched():
    enc = FakeTextEncoder(dim=8)
    names = [f"class{i}" for i in range(300)]
    head = build_classifier(enc, names, "openai_imagenet", batch_size=2048)
    assert head.weights.shape == (300, 8) and len(enc.calls) == 12  # 24,000 texts / 2,048


def test_logits_and_topk():
    enc = FakeTextEncoder()
    head = build_classifier(enc, CLASSES, TEMPLATES)
    img = enc(["cat", "red car"]) * 3.0  # unnormalised on purpose: logits normalise
    logits = head.logits(img)
    torch.testing.assert_close(logits, 100.0 * F.normalize(img, dim=-1) @ head.weights.T)
    probs, idx = head.topk(img, k=5)
    assert idx.shape == (2, 3) and idx[:, 0].tolist() == [0, 2]
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_cupl_descriptions_alone_and_pooled(tmp_path):
    enc = FakeTextEncoder()
    desc = {"cat": ["a small furry pet", "whiskers and a tail"], "Dog": ["a loyal pet that barks"],
            "red car": ["a vehicle painted red"]}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(desc))
    head = build_classifier(enc, CLASSES, TEMPLATES, method="cupl", descriptions=str(p))
    torch.testing.assert_close(head.weights[0], _brute(enc, desc["cat"]))
    torch.testing.assert_close(head.weights[1], _brute(enc, desc["Dog"]))  # case-insensitive match
    mean_head = build_classifier(enc, CLASSES, TEMPLATES)
    assert not torch.allclose(head.weights, mean_head.weights)
    pooled = build_classifier(enc, CLASSES, TEMPLATES, method="cupl", descriptions=desc, pool_templates=True)
    texts = desc["cat"] + [t.replace("{c}", "cat") for t in TEMPLATES]  # uniform weight per text
    torch.testing.assert_close(pooled.weights[0], _brute(enc, texts))


def test_cupl_warns_when_descriptions_never_name_their_class():
    """CuPL's descriptions alone scored below chance on the digits demo (shape sentences that never say "zero"):
    such classes are named in a warning, which the pooled and named cases do not get."""
    import warnings

    from clipforge.zeroshot.cupl import DescriptionsWarning

    enc = FakeTextEncoder()
    unnamed = {"cat": ["a small furry pet"], "Dog": ["a loyal dog that barks"], "red car": ["a red car"]}
    with pytest.warns(DescriptionsWarning, match=r"1 of 3 classes .* \(e.g. 'cat'\)"):
        build_classifier(enc, CLASSES, TEMPLATES, method="cupl", descriptions=unnamed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DescriptionsWarning)
        build_classifier(enc, CLASSES, TEMPLATES, method="cupl", descriptions=unnamed, pool_templates=True)
        named = dict(unnamed, cat=["a cat, a small furry pet"])
        build_classifier(enc, CLASSES, TEMPLATES, method="cupl", descriptions=named)


def test_cupl_missing_and_bad_files(tmp_path):
    enc = FakeTextEncoder()
    with pytest.raises(UsageError, match="no descriptions: dog"):
        build_classifier(enc, CLASSES, TEMPLATES, method="cupl", descriptions={"cat": ["x"], "red car": ["y"]})
    pooled = build_classifier(enc, CLASSES, TEMPLATES, method="cupl", descriptions={"cat": ["x"]}, pool_templates=True)
    torch.testing.assert_close(pooled.weights[1], build_classifier(enc, CLASSES, TEMPLATES).weights[1])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_descriptions(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="does not build a head from texts alone"):
        build_classifier(enc, CLASSES, method="nope")


def test_save_load_roundtrip(tmp_path):
    enc = FakeTextEncoder()
    head = build_classifier(enc, CLASSES, TEMPLATES)
    path = head.save(tmp_path / "heads" / "pets")
    assert path.name == "pets.safetensors" and (tmp_path / "heads" / "pets.json").is_file()
    loaded = ZeroShotHead.load(path)
    assert loaded.classnames == CLASSES and loaded.meta == head.meta and loaded.logit_scale == 100.0
    torch.testing.assert_close(loaded.weights, head.weights)
    with pytest.raises(ClipforgeError, match="not found"):
        ZeroShotHead.load(tmp_path / "missing")


def test_with_tiny_model(tiny_model):
    from clipforge.zeroshot.zeroshot_head import model_text_encoder

    enc = model_text_encoder(tiny_model, batch_size=2)
    head = build_classifier(enc, CLASSES, TEMPLATES)
    with torch.no_grad():
        e = tiny_model.encode_text(tiny_model.tokenizer([t.replace("{c}", "dog") for t in TEMPLATES]), normalize=True)
    torch.testing.assert_close(head.weights[1], F.normalize(e.mean(0), dim=-1), rtol=1e-4, atol=1e-5)
    img = tiny_model.encode_image(torch.rand(2, 3, 32, 32), normalize=True).detach()
    assert head.logits(img).shape == (2, 3)
