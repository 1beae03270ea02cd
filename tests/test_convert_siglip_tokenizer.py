"""SigLIP `spiece.model` directories: clipforge's tokenizer must give transformers' SiglipTokenizer ids exactly.

Golden reference: a small SentencePiece unigram model trained here offline (SigLIP's id layout: <pad>=0,
</s>=1, <unk>=2), wrapped by transformers' slow `SiglipTokenizer` and saved beside a tiny random `SiglipModel`.
clipforge loads the directory; its ids must equal `SiglipTokenizer(texts, padding="max_length", max_length=64,
truncation=True)` on 2000 varied captions, its text embeddings `get_text_features`, and both must survive
clipforge's own save/load and an HF export that transformers reloads.
"""
from __future__ import annotations

import random
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from clipforge.models import load_model  # noqa: E402
from clipforge.models.convert.export import export_model  # noqa: E402
from clipforge.models.convert.siglip_tokenizer import read_spiece, spiece_from_backend, write_spiece  # noqa: E402

CTX, VOCAB = 64, 350
_SYL = "ka ro mi tu sen lo pa ri vel dor an un est ing ter mo ba ne shi qua zo th er".split()
_ODD = ["Café", "DÉJÀ", "naïve", "STRASSE", "straße", "日本の猫", "写真", "ΟΔΟΣ", "Σίσυφος", "İstanbul", "ﬁsh", "ＡＢＣ",
        "①", "😀", "🐈\u200d⬛", "\u200b", "\u00a0", "\t", "\n", "\x1c", "\u3000", "\u2581", "▁▁", "</s>", "<unk>", "<pad>",
        "</S>", "'s", "--", "...", "(x)", "e.g.", "#1", "$5", "100%", "a/b", "“quoted”", "‘x’", "—", "…", "½", "x²",
        " \u0301", "e\u0301", "\r\n", "  ", "\x00", "\u2028", "\ufeff"]
# A combining mark stands after a space or a plain letter: after a character the normaliser rewrites
# ("①\u0301") `tokenizers` drops the mark (test_known_difference_mark_after_rewritten_char).
_PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
# Hand-picked edges: empty, punctuation only, special-token strings, leading marks the normaliser maps away,
# text far over 64 tokens (truncation keeps the end token).
EDGES = ["", "!!!", "  ", "</s>", "</s> hi", "a </s> b", "cat</s>dog", "<unk><unk>", "x <unk>", "\ufeffhello",
         "\u200b hi", "\u0301photo", "▁cat", "ΟΔΟΣ ΣΊΣΥΦΟΣ", "A photo of a CAT.", "kaka " * 60, "a" * 300]


def _captions(n: int, seed: int = 0):
    rng = random.Random(seed)
    words = ["".join(rng.choice(_SYL) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    out = []
    for _ in range(n):
        toks = []
        for _ in range(rng.choice([1, 2, 4, 8, 12, 20, 60])):
            r = rng.random()
            w = rng.choice(words) if r < .6 else rng.choice(_ODD) if r < .85 else rng.choice(_PUNCT)
            if rng.random() < .2:
                w = w.upper() if rng.random() < .5 else w.capitalize()
            toks.append(w + rng.choice([" ", " ", " ", "", "  ", ", ", "\t", ". "]))
        out.append(rng.choice(["", "", " ", "\n", "!"]) + "".join(toks))
    return EDGES + out


CAPTIONS = _captions(2000)


def _train_spiece(path, normalization="nmt_nfkc"):
    rng = random.Random(1)
    words = ["".join(rng.choice(_SYL) for _ in range(rng.randint(1, 3))) for _ in range(500)]
    sents = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(1000)]
    # '<', '>', '/' are pieces in SigLIP's real vocab; with them unknown, HF's "<unk>"-prefix trick eats the
    # token after a special token (an unknown '>' fuses with it), a quirk of tiny vocabularies only.
    sents += ["a < b > c / d <unk> </s>", "Café déjà vu naïve straße", "日本の猫 写真", "Ελληνικά κείμενα", "0 1 2 3 45"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sents), model_prefix=str(path / "sp"), vocab_size=VOCAB, model_type="unigram",
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", normalization_rule_name=normalization, minloglevel=2)
    return path / "sp.model"


def _hf_ids(tok, texts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tok(texts, padding="max_length", max_length=CTX, truncation=True, return_tensors="pt")["input_ids"]


def _text_features(hf, ids):
    with torch.no_grad():
        out = hf.get_text_features(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    """A SigLIP HF directory as the hub ships google/siglip-*: spiece.model + tokenizer configs, no tokenizer.json."""
    d = tmp_path_factory.mktemp("siglip")
    hf_tok = transformers.SiglipTokenizer(vocab_file=str(_train_spiece(tmp_path_factory.mktemp("spm"))))
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=CTX, pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                  patch_size=6)
    torch.manual_seed(0)
    hf = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():  # transformers initialises biases/LN at 0/1: randomise so a swapped tensor shows
        for n, p in hf.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(d)
    hf_tok.save_pretrained(d)
    transformers.SiglipImageProcessor(size={"height": 30, "width": 30}).save_pretrained(d)
    (d / "tokenizer.json").unlink(missing_ok=True)  # the hub's SigLIP repos have none
    assert (d / "spiece.model").is_file()
    return d, hf, hf_tok


@pytest.fixture(scope="module")
def loaded(siglip_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "wrong tokenizer" warning any more
        return load_model(str(siglip_dir[0]))


def test_ids_equal_siglip_tokenizer(siglip_dir, loaded):
    _, _, hf_tok = siglip_dir
    tok = loaded.tokenizer.with_options(parse_special=True)  # transformers' default: "</s>" in text is eos
    assert (tok.add_sot, tok.eot_id, tok.pad_id, tok.context_length) == (False, hf_tok.eos_token_id,
                                                                         hf_tok.pad_token_id, CTX)
    ref, ours = _hf_ids(hf_tok, CAPTIONS), tok(CAPTIONS)
    bad = [CAPTIONS[i] for i in (ref != ours).any(1).nonzero().flatten().tolist()]
    assert not bad, f"{len(bad)} of {len(CAPTIONS)} captions differ, e.g. {bad[:3]!r}"
    full = ours[:, -2] != tok.pad_id  # pad == eos here: rows with a token at 62 were truncated, eos kept at 63
    assert full.sum() > 50 and (ours[full, -1] == tok.eot_id).all()
    assert (ours == 2).any()  # unknown pieces occur: the unk path is exercised


def test_special_tokens_in_text_are_text_by_default(siglip_dir, loaded):
    """Without parse_special a literal "</s>" / "<unk>" is ordinary text (punctuation dropped, as big_vision's
    canonicalisation does), never the eos/unk id; texts without them tokenize as transformers does."""
    _, _, hf_tok = siglip_dir
    tok = loaded.tokenizer
    assert not tok.parse_special
    texts = ["</s>", "a </s> b", "cat</s>dog", "<unk><unk>", "x <unk>"]
    ids = tok(texts)
    for row in ids:
        body = row[: (row != tok.pad_id).nonzero().max() + 1] if (row != tok.pad_id).any() else row[:0]
        assert (body[:-1] != tok.eot_id).all()
    assert torch.equal(ids, tok([t.replace("<", "").replace(">", "").replace("/", "") for t in texts]))
    assert not torch.equal(ids, tok.with_options(parse_special=True)(texts))
    plain = [c for c in CAPTIONS if "</s>" not in c and "<unk>" not in c]
    assert torch.equal(tok(plain), _hf_ids(hf_tok, plain))


@pytest.mark.parametrize("normalization", ["identity", "nfkc"])
def test_ids_equal_for_other_normalisers(tmp_path, normalization):
    """SigLIP ships nmt_nfkc; the whitespace rules must follow the model's spec for any normaliser."""
    from clipforge.models.convert.siglip_tokenizer import load_siglip_tokenizer

    f = _train_spiece(tmp_path, normalization)
    hf_tok = transformers.SiglipTokenizer(vocab_file=str(f))
    texts = CAPTIONS[:600]
    tok = load_siglip_tokenizer(f, CTX).with_options(parse_special=True)
    assert torch.equal(tok(texts), _hf_ids(hf_tok, texts))


def test_text_embeddings_equal_get_text_features(siglip_dir, loaded):
    _, hf, hf_tok = siglip_dir
    texts = ["a photo of a cat", "Two DOGS, playing!", "", "ΟΔΟΣ 日本の猫 😀", CAPTIONS[40], "kaka " * 60]
    ids = _hf_ids(hf_tok, texts)
    with torch.no_grad():
        ours = loaded.encode_text(loaded.tokenizer(texts), normalize=False)
    ref = _text_features(hf, ids)
    assert ours.shape == ref.shape and (ours - ref).abs().max().item() < 1e-5


def test_clipforge_save_and_reload_keeps_ids(siglip_dir, loaded, tmp_path):
    loaded.save_pretrained(tmp_path / "cf")
    assert (tmp_path / "cf" / "tokenizer.json").is_file() and not (tmp_path / "cf" / "spiece.model").exists()
    back = load_model(str(tmp_path / "cf"))
    assert back.tokenizer.clean == "siglip"
    assert torch.equal(back.tokenizer.with_options(parse_special=True)(CAPTIONS), _hf_ids(siglip_dir[2], CAPTIONS))


def test_spiece_codec_roundtrip(siglip_dir, loaded, tmp_path):
    """read_spiece/write_spiece and the backend inversion keep what sentencepiece encodes with."""
    orig = siglip_dir[0] / "spiece.model"
    m = read_spiece(orig)
    assert [p for p, _, _ in m.pieces][:3] == ["<pad>", "</s>", "<unk>"] and m.unk_id == 2
    assert m.norm_name == "nmt_nfkc" and m.charsmap
    inv = spiece_from_backend(loaded.tokenizer.backend)
    assert inv.pieces == [(p, pytest.approx(s), t) for p, s, t in m.pieces] and inv.charsmap == m.charsmap
    assert (inv.add_dummy_prefix, inv.remove_extra_whitespaces, inv.escape_whitespaces) == (True, True, True)
    write_spiece(inv, tmp_path / "w.model")
    a, b = spm.SentencePieceProcessor(model_file=str(orig)), spm.SentencePieceProcessor(model_file=str(tmp_path / "w.model"))
    assert [a.encode(t) for t in CAPTIONS[:300]] == [b.encode(t) for t in CAPTIONS[:300]]


def test_export_hf_reloads_in_transformers_with_same_ids(siglip_dir, loaded, tmp_path):
    _, hf, hf_tok = siglip_dir
    export_model(loaded, "hf", tmp_path / "hf")
    tok2 = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(tok2).__name__ == "SiglipTokenizer"
    ref = _hf_ids(hf_tok, CAPTIONS)
    assert torch.equal(_hf_ids(tok2, CAPTIONS), ref)
    hf2 = transformers.SiglipModel.from_pretrained(tmp_path / "hf").eval()
    assert (_text_features(hf2, ref[:8]) - _text_features(hf, ref[:8])).abs().max().item() < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = load_model(str(tmp_path / "hf"))
    assert torch.equal(back.tokenizer.with_options(parse_special=True)(CAPTIONS), ref)


@pytest.mark.xfail(strict=True, reason="tokenizers' Precompiled normaliser maps a whole short grapheme by its first "
                   "mapped prefix and drops the rest; sentencepiece maps the prefix and keeps the mark")
def test_known_difference_mark_after_rewritten_char(siglip_dir, loaded):
    texts = ["a \u2460\u0301 b", "\ufb01\u0301sh", "x\u00b2\u0301"]  # circled one, fi ligature, superscript two
    assert torch.equal(loaded.tokenizer(texts), _hf_ids(siglip_dir[2], texts))


def test_decode_uses_the_backend_for_sentencepiece(siglip_dir):
    from clipforge.models import load_model

    tok, hf_tok = load_model(siglip_dir[0]).tokenizer, siglip_dir[2]
    for text in ("a photo of two cats", "the number seven, in ink"):
        ids = tok([text])[0].tolist()
        assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True).strip()
        assert "▁" not in tok.decode(ids) and tok.decode(ids)
