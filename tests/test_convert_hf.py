"""HF transformers CLIPModel / SiglipModel <-> clipforge: parity against transformers' own forward pass.

Golden reference: randomly initialised tiny HF models, saved with `save_pretrained`, evaluated by transformers;
clipforge loads the directory and must reproduce embeddings and logits (fp32, 1e-5), and its HF export must
load back into transformers with the same outputs.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from clipforge.errors import ClipforgeError, UsageError  # noqa: E402
from clipforge.models import create_model, load_model, train_tokenizer  # noqa: E402
from clipforge.models.convert.export import export_model  # noqa: E402

TOL = 1e-5
CAPTIONS = ["a photo of a cat", "two dogs playing in the snow", "a red bicycle leaning on a wall",
            "an aerial view of a city at night", "a bowl of soup", "people crossing a street"] * 20


def _tiny_kw(vocab, ctx=24):
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=ctx)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                  patch_size=6)
    return text, vision


@pytest.fixture(scope="module")
def clip_tok():
    return train_tokenizer(CAPTIONS * 3, vocab_size=600, context_length=24)


def _hf_clip(tmp, tok, eos_token_id, act="quick_gelu"):
    text, vision = _tiny_kw(tok.vocab_size)
    text.update(eos_token_id=eos_token_id, bos_token_id=tok.sot_id, pad_token_id=tok.eot_id, hidden_act=act)
    vision.update(hidden_act=act)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # transformers initialises biases/LN at 0/1: randomise so a swapped tensor shows
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp)
    _write_clip_tokenizer_files(tok, tmp)
    transformers.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(tmp)
    return model


def _write_clip_tokenizer_files(tok, d):
    """vocab.json + merges.txt + tokenizer_config.json as OpenAI's HF repos ship them (pad = eos)."""
    m = json.loads(tok.backend.to_str())["model"]
    (d / "vocab.json").write_text(json.dumps(m["vocab"]), encoding="utf-8")
    merges = [x if isinstance(x, str) else " ".join(x) for x in m["merges"]]
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 24}))


def _hf_outputs(model, pixels, ids):
    with torch.no_grad():
        o = model(input_ids=ids, pixel_values=pixels)
    return o.image_embeds, o.text_embeds, o.logits_per_image


def _native_outputs(model, pixels, ids):
    with torch.no_grad():
        o = model(pixels, ids)
    logits = o.logit_scale * o.image_embeds @ o.text_embeds.T
    if o.logit_bias is not None:
        logits = logits + o.logit_bias
    return o.image_embeds, o.text_embeds, logits


def _assert_close(a, b):
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() < TOL


@pytest.mark.parametrize("eos_mode", ["legacy_argmax", "eos_id"])
def test_hf_clip_parity_and_export_roundtrip(tmp_path, clip_tok, eos_mode):
    eos = 2 if eos_mode == "legacy_argmax" else clip_tok.eot_id
    hf = _hf_clip(tmp_path / "hf", clip_tok, eos)
    model = load_model(str(tmp_path / "hf"))
    assert model.config.text.pool == ("argmax" if eos == 2 else "eos")
    assert model.config.vision.act == model.config.text.act == "quick_gelu"
    pixels = torch.randn(3, 3, 30, 30)
    ids = model.tokenizer(CAPTIONS[:5])  # real tokenizer rows: sot ... eot, padded with eot (pad = eos)
    ids[4, 3:] = clip_tok.eot_id  # a short row
    ref = _hf_outputs(hf, pixels, ids)
    _assert_close(_native_outputs(model, pixels, ids), ref)

    export_model(model, "hf", tmp_path / "back")
    hf2 = transformers.CLIPModel.from_pretrained(tmp_path / "back").eval()
    _assert_close(_hf_outputs(hf2, pixels, ids), ref)
    tok2 = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    enc = tok2(CAPTIONS[:5], padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], model.tokenizer(CAPTIONS[:5]))


def test_hf_clip_gelu_variant_recorded(tmp_path, clip_tok):
    hf = _hf_clip(tmp_path / "hf", clip_tok, clip_tok.eot_id, act="gelu")
    model = load_model(str(tmp_path / "hf"))
    assert model.config.vision.act == "gelu" and model.config.text.act == "gelu"
    pixels, ids = torch.randn(2, 3, 30, 30), model.tokenizer(CAPTIONS[:2])
    _assert_close(_native_outputs(model, pixels, ids), _hf_outputs(hf, pixels, ids))


def _hf_siglip(tmp):
    text, vision = _tiny_kw(600, ctx=16)
    text.update(pad_token_id=1, eos_token_id=1)
    cfg = transformers.SiglipConfig(text_config=text, vision_config=vision)
    torch.manual_seed(0)
    model = transformers.SiglipModel(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n or n in ("logit_scale", "logit_bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp)
    transformers.SiglipImageProcessor(size={"height": 30, "width": 30}).save_pretrained(tmp)
    return model


def test_hf_siglip_parity_and_export_roundtrip(tmp_path):
    hf = _hf_siglip(tmp_path / "hf")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model = load_model(str(tmp_path / "hf"))
    assert any("no tokenizer files" in str(x.message) for x in w)  # never silent about the wrong tokenizer
    c = model.config
    assert (c.vision.pool, c.vision.ln_pre, c.vision.act, c.text.pool, c.text.causal) == \
        ("map", False, "gelu_tanh", "last", False)
    assert c.vision.ln_eps == c.text.ln_eps == 1e-6
    assert c.preprocess.resize_mode == "squash" and c.preprocess.mean == (0.5, 0.5, 0.5)
    pixels = torch.randn(3, 3, 30, 30)
    ids = torch.randint(0, 600, (4, 16))
    ref = _hf_outputs(hf, pixels, ids)
    _assert_close(_native_outputs(model, pixels, ids), ref)
    assert model.logit_bias is not None

    export_model(model, "hf", tmp_path / "back")
    hf2 = transformers.SiglipModel.from_pretrained(tmp_path / "back").eval()
    _assert_close(_hf_outputs(hf2, pixels, ids), ref)


def test_hf_preprocessing_matches_image_processor(tmp_path, clip_tok, rgb_image):
    _hf_clip(tmp_path / "hf", clip_tok, clip_tok.eot_id)
    model = load_model(str(tmp_path / "hf"))
    pre = model.config.preprocess
    assert (pre.interpolation, pre.resize_mode) == ("bicubic", "shortest")
    proc = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "hf")
    assert pre.mean == pytest.approx(tuple(proc.image_mean)) and pre.std == pytest.approx(tuple(proc.image_std))
    img = rgb_image.resize((60, 60))  # exact 2x downscale: no rounding ambiguity in the resize target
    ref = proc(images=img, return_tensors="pt")["pixel_values"][0]
    ours = model.preprocess(img)
    assert ours.shape == ref.shape == (3, 30, 30)
    assert (ours - ref).abs().mean().item() < 0.02  # PIL vs torch bicubic kernels differ by a few levels


def test_leftover_and_missing_keys_are_errors(tmp_path, clip_tok):
    from safetensors.torch import load_file, save_file

    _hf_clip(tmp_path / "hf", clip_tok, clip_tok.eot_id)
    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    sd["vision_model.extra_thing.weight"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ClipforgeError, match="extra_thing"):
        load_model(str(tmp_path / "hf"))
    del sd["vision_model.extra_thing.weight"], sd["text_projection.weight"]
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ClipforgeError, match="text_projection"):
        load_model(str(tmp_path / "hf"))


def test_export_refuses_what_hf_cannot_express(tmp_path):
    with pytest.raises(UsageError, match="vision.pool=cls"):
        export_model(create_model("tiny"), "hf", tmp_path / "x")  # tiny mean-pools patches: no HF equivalent
    assert not (tmp_path / "x").exists()


def test_native_clip_style_model_exports_to_hf(tmp_path):
    model = create_model("tiny", vision={"pool": "cls", "act": "quick_gelu"}, text={"act": "quick_gelu"}).eval()
    export_model(model, "hf", tmp_path / "hf")
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    pixels, ids = torch.randn(2, 3, 32, 32), model.tokenizer(["a cat", "a much longer caption about a dog"])
    _assert_close(_hf_outputs(hf, pixels, ids), _native_outputs(model, pixels, ids))
    back = load_model(str(tmp_path / "hf"))
    _assert_close(_native_outputs(back, pixels, ids), _native_outputs(model, pixels, ids))
    # the same ids through the end token; after it the export pads with the end token, which a causal tower
    # pooled there never sees (a pad token that is also text, "!", would split texts in transformers)
    got, want = back.tokenizer(["Hello, World!"]), model.tokenizer(["Hello, World!"])
    n = int((want != model.tokenizer.pad_id).sum())
    assert torch.equal(got[:, :n], want[:, :n]) and (got[:, n:] == back.tokenizer.eot_id).all()


def test_hf_directory_takes_a_given_tokenizer(tmp_path, clip_tok):
    """`tokenizer` replaces an HF directory's own: a directory of HF tokenizer files (read as transformers
    would), or an object; anything else is a one-line refusal."""
    _hf_clip(tmp_path / "hf", clip_tok, clip_tok.eot_id)
    own = load_model(str(tmp_path / "hf")).tokenizer
    (tmp_path / "tok").mkdir()
    _write_clip_tokenizer_files(clip_tok, tmp_path / "tok")
    given = load_model(str(tmp_path / "hf"), tokenizer=tmp_path / "tok").tokenizer
    assert torch.equal(given(CAPTIONS), own(CAPTIONS))
    assert load_model(str(tmp_path / "hf"), tokenizer=clip_tok).tokenizer.backend is clip_tok.backend
    with pytest.raises(UsageError, match="not a directory of HF tokenizer files"):
        load_model(str(tmp_path / "hf"), tokenizer=tmp_path / "nothing-here")
