import torch

from clipforge.models import Tokenizer, default_tokenizer, train_tokenizer
from clipforge.models.tokenizer import SOT, EOT


def test_default_tokenizer_layout():
    tok = default_tokenizer(16)
    assert tok.vocab_size == 514 and tok.sot_id == 512 and tok.eot_id == 513
    ids = tok(["Hi"])
    assert ids.shape == (1, 16)
    # "hi" lower-cased: byte 'h', then 'i</w>' (OpenAI layout: 256 bytes, then the same with </w>)
    assert ids[0, :4].tolist() == [512, tok.backend.token_to_id("h"), tok.backend.token_to_id("i</w>"), 513]
    assert ids[0, 4:].eq(0).all()


def test_normalisation_lowercase_whitespace():
    tok = default_tokenizer()
    a, b = tok(["A  Photo\tof\n a CAT"]), tok(["a photo of a cat"])
    assert torch.equal(a, b)


def test_truncation_keeps_end_token():
    tok = default_tokenizer(8)
    ids = tok(["this is a much longer sentence than eight tokens"])[0]
    assert ids[0] == tok.sot_id and ids[-1] == tok.eot_id and (ids != 0).all()


def test_unicode_round_trip():
    tok = default_tokenizer(77)
    for text in ["café crème", "東京の写真", "emoji 🚲 bike", "naïve façade"]:
        assert tok.decode(tok([text])[0]) == text.lower()


def test_trained_tokenizer_is_shorter_and_round_trips(tmp_path):
    corpus = [f"a photo of the digit {w}" for w in "zero one two three four five six seven eight nine".split()] * 20
    tok = train_tokenizer(corpus, vocab_size=600, context_length=32)
    base = default_tokenizer(32)
    text = "a photo of the digit seven"
    assert (tok([text]) != 0).sum() < (base([text]) != 0).sum()
    assert tok.decode(tok([text])[0]) == text
    # OpenAI layout: specials come last
    assert tok.eot_id == tok.vocab_size - 1 and tok.sot_id == tok.vocab_size - 2
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert torch.equal(again(corpus[:5]), tok(corpus[:5])) and again.context_length == 32


def test_openai_cleaning_option(tmp_path):
    import pytest

    from clipforge.errors import UsageError
    from clipforge.models.tokenizer import build_clip_backend

    plain = Tokenizer(build_clip_backend(()), 32)
    openai = Tokenizer(build_clip_backend(()), 32, clean="openai")
    raw = "fish &amp;amp; chips \u201cto go\u201d"
    assert torch.equal(openai([raw]), plain(['fish & chips "to go"']))
    assert not torch.equal(plain([raw]), openai([raw]))
    openai.save(tmp_path)
    assert Tokenizer.load(tmp_path).clean == "openai"
    with pytest.raises(UsageError, match="valid: none, openai"):
        Tokenizer(build_clip_backend(()), 32, clean="ftfy")


def test_train_tokenizer_is_deterministic_and_encodes_with_its_merges():
    import json
    from pathlib import Path

    caps = [c for v in json.loads((Path(__file__).parents[1] / "src/clipforge/data/photos_captions.json")
                                  .read_text()).values() for c in v["captions"]]
    runs = [train_tokenizer(caps, 768, 32) for _ in range(3)]
    assert all(torch.equal(runs[0](caps), r(caps)) for r in runs[1:])
    # merges make frequent words single tokens: "photo" appears in many captions
    assert runs[0].backend.token_to_id("photo</w>") is not None
    assert all(runs[0].decode(runs[0]([c])[0]) == " ".join(c.lower().split()) for c in caps[:5] if c.isascii())
