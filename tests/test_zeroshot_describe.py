"""Description scoring (AdaptCLIPZS) and DisCLIP-style description selection, against brute force."""
import torch
import torch.nn.functional as F

from clipforge.zeroshot.describe import DescriptionScorer, description_prompts
from clipforge.zeroshot.disclip import DisclipClassifier
from conftest import FakeTextEncoder

DESC = {"cat": ["which has whiskers", "which purrs"], "dog": ["which barks"]}


def test_description_prompts_format():
    texts, owner = description_prompts(["cat", "dog", "fish"], DESC, ["a photo of a {c}.", "art of the {c}."])
    assert texts[:2] == ["a photo of a cat, which has whiskers", "a photo of a cat, which purrs"]
    assert "art of the dog, which barks" in texts
    assert texts[-2:] == ["a photo of a fish.", "art of the fish."]  # no descriptions: plain prompts
    assert owner == [0, 0, 0, 0, 1, 1, 2, 2]


def test_description_scores_are_mean_probability_of_own_prompts():
    enc = FakeTextEncoder()
    classes = ["cat", "dog", "fish"]
    scorer = DescriptionScorer.build(enc, classes, DESC, templates=["a photo of a {c}.", "art of the {c}."],
                                     logit_scale=10.0)
    img = torch.randn(7, 32, generator=torch.Generator().manual_seed(0))
    texts, owner = description_prompts(classes, DESC, ["a photo of a {c}.", "art of the {c}."])
    e = F.normalize(enc(texts), dim=-1)
    p = (10.0 * F.normalize(img, dim=-1) @ e.T).softmax(-1)  # softmax over ALL prompts
    owner = torch.tensor(owner)
    expected = torch.stack([p[:, owner == c].mean(1) for c in range(3)], 1)
    torch.testing.assert_close(scorer.scores(img), expected)
    torch.testing.assert_close(scorer.scores(img, block_size=2), expected)
    scores, idx = scorer.predict(img, k=2)
    assert idx.shape == (7, 2) and torch.equal(idx[:, 0], expected.argmax(1))


def _basis(i, d=6):
    v = torch.zeros(d)
    v[i] = 1.0
    return v


def _hand_disclip(w=1.0):
    e = [_basis(i) for i in range(6)]
    class_emb = torch.stack([e[0], e[1], e[2]])
    desc = [
        torch.stack([e[0], F.normalize(e[0] + e[1], dim=0), e[1]]),  # discriminative / shared / misleading
        torch.stack([e[1]]),
        torch.zeros(0, 6),  # no descriptions -> the class vector stands in
    ]
    refs = [e[0][None], e[1][None], e[2][None]]
    return DisclipClassifier(class_emb, desc, ["a", "b", "c"], refs, w=w, top=3)


def test_selection_rule_by_hand():
    clf = _hand_disclip()
    assert clf.selected(0, [0, 1, 2]).tolist() == [0]  # shared ties with class 1's references: dropped
    assert clf.selected(0, [0, 2]).tolist() == [0, 1]  # against class 2 only, the shared one discriminates
    clf2 = DisclipClassifier(clf.class_emb, [torch.stack([_basis(3)]), clf.desc_emb[1], torch.zeros(0, 6)],
                             ["a", "b", "c"], clf.reference_feats)
    assert clf2.selected(0, [0, 1]).tolist() == [0]  # nothing discriminates: fall back to all


def test_rescoring_matches_formula():
    clf = _hand_disclip(w=0.5)
    img = F.normalize(torch.randn(5, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    pred, cand, rescored = clf.predict(img)
    base = img @ clf.class_emb.T
    for n in range(5):
        for j, c in enumerate(cand[n].tolist()):
            d = clf.desc_emb[c][clf.selected(c, cand[n].tolist())]
            assert torch.isclose(rescored[n, j], 0.5 * base[n, c] + (d @ img[n]).mean())
        assert pred[n] == cand[n, rescored[n].argmax()]


def test_build_from_encoder_and_descriptions():
    enc = FakeTextEncoder()
    classes = ["cat", "dog", "fish"]
    class_emb = F.normalize(enc([f"a photo of a {c}." for c in classes]), dim=-1)
    clf = DisclipClassifier.build(enc, class_emb, classes, DESC)
    assert [len(d) for d in clf.desc_emb] == [2, 1, 1]
    pred, cand, _ = clf.predict(class_emb)
    assert cand.shape == (3, 3) and pred.shape == (3,)
