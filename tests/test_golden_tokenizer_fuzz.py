"""5,000 strings of exotic Unicode tokenized as the references do (issue 31, item 3).

The golden file (tools/make_tokenizer_fuzz.py, reference environment) holds the strings and two references' ids:
open_clip's SimpleTokenizer, and transformers' CLIPTokenizer built from vocab.json + merges.txt. Combining marks
whose case fold is a letter (U+0345), newly assigned letters (U+A7D4, CJK Extension J) and "<|" / "|>" around
special words are where a port drifts.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from clipforge.models import CLIPConfig, TextConfig
from clipforge.models.convert.hf_files import load_hf_tokenizer
from clipforge.models.convert.openai import tokenizer_from_bpe_file
from clipforge.models.tokenizer import EOT, SOT, bytes_to_unicode

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def fuzz():
    with gzip.open(GOLDEN / "tokenizer_fuzz.json.gz", "rt", encoding="utf-8") as f:
        return json.load(f)


def _merges():
    lines = gzip.open(GOLDEN / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1: 49152 - 256 - 2 + 1]]


def _differences(texts, refs, encode):
    return [(t, r, encode(t)) for t, r in zip(texts, refs) if encode(t) != r]


def test_fuzz_set_is_the_documented_size_and_hard(fuzz):
    texts = fuzz["texts"]
    assert len(texts) == 5000 == len(fuzz["open_clip"]) == len(fuzz["hf_files"])
    for s in ("a\u0345b", "\u0130\u031c", "\u0124\u0331", "x\U000324f4y", "\ua7d4", "<|ENDOFTEXT|>"):
        assert s in texts


def test_open_clip_route_matches_open_clip_on_every_fuzz_string(fuzz):
    pytest.importorskip("ftfy")
    tok = tokenizer_from_bpe_file(GOLDEN / "bpe_simple_vocab_16e6.txt.gz", 77)

    def encode(text):
        return [tok.sot_id] + tok.encode(text)[:75] + [tok.eot_id]

    bad = _differences(fuzz["texts"], fuzz["open_clip"], encode)
    assert not bad, f"{len(bad)} of 5000 differ from open_clip, e.g. {bad[:3]!r}"
    # the batch path (padding, truncation) agrees with the per-text path
    rows = tok(fuzz["texts"][:300], truncate="silent")
    for row, ref in zip(rows.tolist(), fuzz["open_clip"][:300]):
        assert row[: len(ref)] == ref and not any(row[len(ref):])


def test_vocab_and_merges_route_matches_transformers_on_every_fuzz_string(fuzz, tmp_path):
    merges = _merges()
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [SOT, EOT]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                         encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                         encoding="utf-8")
    cfg = CLIPConfig(text=TextConfig(vocab_size=len(vocab), context_length=77, pool="eos",
                                     eos_token_id=len(vocab) - 1))
    tok = load_hf_tokenizer(tmp_path, cfg)
    # transformers parses special tokens in raw text; clipforge does only when asked
    special = tok.with_options(parse_special=True)

    def encode(text):
        return [special.sot_id] + special.encode(text) + [special.eot_id]

    bad = _differences(fuzz["texts"], fuzz["hf_files"], encode)
    assert not bad, f"{len(bad)} of 5000 differ from transformers' CLIPTokenizer, e.g. {bad[:3]!r}"
    # by default a caption cannot inject the end token
    assert tok.eot_id not in tok.encode("<|endoftext|>")
