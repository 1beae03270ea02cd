"""HF tokenizer directories -> clipforge Tokenizer: ids identical to transformers' CLIPTokenizer.

The vocabulary is synthetic (merges learned with clipforge's train_tokenizer, written as vocab.json/merges.txt),
then loaded by transformers independently; a few thousand varied captions (unicode, accents, CJK, emoji,
punctuation runs, contractions, digits, whitespace runs, over-long text) must tokenize identically,
padded and truncated the way the model consumes them.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from clipforge.models import train_tokenizer  # noqa: E402
from clipforge.models.config import CLIPConfig, TextConfig  # noqa: E402
from clipforge.models.convert.hf_files import load_hf_tokenizer  # noqa: E402

CTX = 40
WORDS = ("a photo of the cat dog bicycle red blue street city night snow playing crossing aerial view bowl soup "
         "people running café naïve résumé Zürich São Paulo Ørsted straße Москва кошка 東京 猫 写真 サイクリング "
         "🚲 🐱 ❤️ 3.14 2024 #1 it's they're we've I'm you'll she'd don't O'Brien e-mail U.S.A. x2 ½ ™ — “quoted” "
         "'single' (paren) [bracket] {brace} <tag> &amp; a/b c\\d 100% $5 @user ... !!! ??? ;-) ~~~ ___").split()


def captions(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.choice([1, 3, 8, 15, 60])  # 60 words overflows the 40-token context
        words = [rng.choice(WORDS) for _ in range(k)]
        if rng.random() < 0.3:
            words = [w.upper() if rng.random() < 0.5 else w.capitalize() for w in words]
        sep = rng.choice([" ", "  ", "\t", " \n ", ", ", ""])
        text = sep.join(words)
        if rng.random() < 0.2:
            text = "  " + text + "  "
        out.append(text)
    return out


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    tok = train_tokenizer(captions(3000, seed=1), vocab_size=1500, context_length=CTX)
    d = tmp_path_factory.mktemp("clip_tok")
    m = json.loads(tok.backend.to_str())["model"]
    (d / "vocab.json").write_text(json.dumps(m["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [x if isinstance(x, str) else " ".join(x) for x in m["merges"]]
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": CTX}))
    hf = transformers.CLIPTokenizer.from_pretrained(d)
    d2 = tmp_path_factory.mktemp("clip_tok_json")  # the same tokenizer as HF saves it: tokenizer.json
    hf.save_pretrained(d2)
    assert (d2 / "tokenizer.json").is_file()
    return d, d2, len(m["merges"])


def _cfg(vocab):
    return CLIPConfig(text=TextConfig(vocab_size=vocab, context_length=CTX, pool="eos", eos_token_id=vocab - 1))


@pytest.mark.parametrize("which", ["vocab_merges", "tokenizer_json"])
def test_ids_match_hf_clip_tokenizer(tok_dirs, which):
    d = tok_dirs[0] if which == "vocab_merges" else tok_dirs[1]
    hf = transformers.CLIPTokenizer.from_pretrained(d)
    ours = load_hf_tokenizer(d, _cfg(hf.vocab_size if hasattr(hf, "vocab_size") else len(hf)))
    assert tok_dirs[2] > 500  # the synthetic vocab really has merges, not just bytes
    texts = captions(3000, seed=2)
    ref = hf(texts, padding="max_length", max_length=CTX, truncation=True, return_tensors="pt")["input_ids"]
    got = ours(texts)
    bad = [i for i in range(len(texts)) if not torch.equal(ref[i], got[i])]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {texts[bad[0]]!r}: {ref[bad[0]]} vs {got[bad[0]]}"
    assert ours.pad_id == hf.pad_token_id and ours.eot_id == hf.eos_token_id and ours.sot_id == hf.bos_token_id
    full = got[:, -2] != ours.pad_id  # pad == eos here: a full row has a real token just before the end
    assert full.sum() > 100  # many rows were truncated ...
    assert (got[full, -1] == ours.eot_id).all()  # ... and still end with the end token


def test_unpadded_encodings_match(tok_dirs):
    hf = transformers.CLIPTokenizer.from_pretrained(tok_dirs[0])
    ours = load_hf_tokenizer(tok_dirs[0], _cfg(len(hf)))
    for t in captions(300, seed=3):
        assert ours.encode(t) == hf(t, add_special_tokens=False)["input_ids"]
