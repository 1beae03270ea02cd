"""BLEU and CIDEr-D against pycocoevalcap (tests/golden/caption_metrics.json, written by
tools/make_caption_metrics_golden.py in the reference environment), and their defining properties."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipforge.errors import UsageError
from clipforge.metrics.captioning import bleu, caption_metrics, cider, tokenize

GOLDEN = json.loads((Path(__file__).parent / "golden" / "caption_metrics.json").read_text())


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{len(c['candidates'])}images")
def test_scores_equal_pycocoevalcap(case):
    b = bleu(case["candidates"], case["references"])
    assert b == pytest.approx(case["bleu"], rel=1e-9, abs=1e-12)
    c, per = cider(case["candidates"], case["references"])
    assert c == pytest.approx(case["cider"], rel=1e-9, abs=1e-12)
    assert per == pytest.approx(case["cider_per_image"], rel=1e-9, abs=1e-12)


def test_tokenizer_matches_the_ptb_tokenizer_on_plain_captions():
    raw = GOLDEN["raw"]
    assert [tokenize(c) for c in raw["candidates"]] == raw["tokenized_candidates"]
    assert [[tokenize(r) for r in rs] for rs in raw["references"]] == raw["tokenized_references"]
    m = caption_metrics(raw["candidates"], raw["references"])
    assert m["bleu_4"] == pytest.approx(raw["bleu"][3], rel=1e-9, abs=1e-12)
    assert m["cider"] == pytest.approx(raw["cider"], rel=1e-9)


def test_a_perfect_caption_beats_a_wrong_one():
    refs = [["a photo of the digit seven"], ["a photo of the digit three"], ["a drawing of a red bicycle"]]
    right = caption_metrics([r[0] for r in refs], refs)
    wrong = caption_metrics(["a photo of the digit three", "a photo of the digit seven", "a red car"], refs)
    assert right["bleu_4"] == pytest.approx(1.0) and right["cider"] > wrong["cider"] and wrong["bleu_4"] < 0.9


def test_refuses_mismatched_inputs():
    with pytest.raises(UsageError, match="reference"):
        caption_metrics(["a"], [[]])
    with pytest.raises(UsageError, match="candidates"):
        caption_metrics(["a", "b"], [["a"]])
