"""One contract test over every registered config, plus config/registry behaviour."""
from __future__ import annotations

import pytest
import torch

from clipforge.errors import UsageError
from clipforge.models import CLIPOutput, create_model, get_model_config, list_models
from clipforge.models.summary import count_parameters

# Full-size configs run with their real widths, patching, pooling and heads but one layer per tower, so the
# contract is checked on every architecture in seconds; full parameter counts are checked on the meta device.
SHRINK = {"vision": {"layers": 1}, "text": {"layers": 1}}


def _make(name):
    if name == "tiny":
        return create_model(name)
    decoder = {"decoder": {"layers": 1}} if hasattr(get_model_config(name), "decoder") else {}  # CoCa
    return create_model(name, **SHRINK, **decoder)


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name):
    torch.manual_seed(0)
    model = _make(name).eval()
    cfg = model.config
    B = 2
    px = torch.randn(B, 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = model.tokenizer(["a photo of a cat", "two dogs playing in the snow, at night"])
    assert ids.shape == (B, cfg.text.context_length)
    with torch.no_grad():
        img = model.encode_image(px)
        txt = model.encode_text(ids)
        raw = model.encode_image(px, normalize=False)
        out = model(px, ids)
    assert img.shape == (B, cfg.embed_dim) and txt.shape == (B, cfg.embed_dim)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(B))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(B))
    assert isinstance(out, CLIPOutput)
    torch.testing.assert_close(out.image_embeds, img)
    torch.testing.assert_close(out.text_embeds, txt)
    assert out.logit_scale.item() == pytest.approx(torch.tensor(cfg.logit_scale_init).exp().item(), rel=1e-5)
    assert (out.logit_bias is None) == (cfg.logit_bias_init is None)
    assert out.logits().shape == (B, B)
    # different inputs give different embeddings (the towers actually read their input)
    assert (img[0] - img[1]).abs().max() > 1e-4 and (txt[0] - txt[1]).abs().max() > 1e-4


SLOW_BACKWARD = ("ViT-L-14", "siglip-B-16", "coca_ViT-B-32")  # (coca: its 49,408 x 512 vocabulary projection)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BACKWARD else n
                                  for n in list_models()])
def test_grad_checkpointing_same_result(name):
    torch.manual_seed(0)
    model = _make(name).train()
    cfg = model.config
    px = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = model.tokenizer(["a red bicycle", "a blue car"])

    def run():
        model.zero_grad()
        out = model(px, ids)
        out.logits().logsumexp(-1).sum().backward()
        return out.image_embeds.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_emb, ref_grads = run()
    model.set_grad_checkpointing(True)
    emb, grads = run()
    torch.testing.assert_close(emb, ref_emb)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-5, atol=1e-6, msg=n)


def test_token_level_features(tiny_model):
    px = torch.randn(3, 3, 32, 32)
    ids = tiny_model.tokenizer(["a", "bb cc", "ddd eee fff"])
    out = tiny_model(px, ids, return_tokens=True)
    assert out.image_tokens.shape == (3, 64, 64)  # (B, 8x8 patches, D)
    assert out.text_tokens.shape == (3, 32, 64) and out.text_mask.shape == (3, 32)
    assert out.text_mask.sum(1).tolist() == [(row != 0).sum().item() for row in ids]
    torch.testing.assert_close(out.image_tokens.norm(dim=-1), torch.ones(3, 64))


@pytest.mark.parametrize("name,published", [
    ("ViT-B-32", 151_277_313),  # OpenAI CLIP ViT-B/32
    ("ViT-B-16", 149_620_737),  # OpenAI CLIP ViT-B/16
    ("ViT-L-14", 427_616_513),  # OpenAI CLIP ViT-L/14
])
def test_parameter_counts_match_published(name, published):
    assert count_parameters(name)["total"] == published


def test_siglip_parameter_count():
    # google/siglip-base-patch16-224 is reported as 203.2 M parameters
    assert count_parameters("siglip-B-16")["total"] == pytest.approx(203.2e6, rel=2e-3)


def test_no_weight_decay_names(tiny_model):
    nwd = tiny_model.no_weight_decay()
    assert "logit_scale" in nwd and "visual.positional_embedding" in nwd and "text.token_embedding.weight" in nwd
    assert "visual.transformer.blocks.0.ln_1.weight" in nwd and "visual.proj.bias" not in nwd
    assert "visual.transformer.blocks.0.attn.qkv.weight" not in nwd
    assert "visual.conv.weight" not in nwd


def test_unknown_keys_raise_with_valid_list():
    with pytest.raises(UsageError, match="valid keys:.*embed_dim"):
        create_model("tiny", embed_dimm=32)
    with pytest.raises(UsageError, match=r"config\.vision.*patch_size"):
        create_model("tiny", vision={"patch": 2})
    with pytest.raises(UsageError, match="registered models:.*tiny"):
        get_model_config("no-such-model")


def test_overrides_nested():
    m = create_model("tiny", embed_dim=32, vision={"layers": 1, "pool": "cls"})
    assert m.config.embed_dim == 32 and m.config.vision.layers == 1 and m.config.vision.width == 64
    assert m.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_tokenizer_larger_than_text_vocab_is_rejected():
    from clipforge.models import Tokenizer, train_tokenizer

    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(3000)]
    tok = train_tokenizer([" ".join(words[i:i + 8]) for i in range(0, 3000, 4)] * 2, vocab_size=1500)
    assert tok.vocab_size > 1024
    with pytest.raises(UsageError, match="vocab_size"):
        create_model("tiny", tokenizer=tok)


@pytest.mark.parametrize("name", ["tiny", "ViT-B-32"])
def test_text_padding_trim_is_exact(name):
    """Causal towers drop the padding columns after the end token; the pooled output must not change."""
    torch.manual_seed(0)
    model = _make(name).eval()
    ids = model.tokenizer(["a cat", "a much longer caption about two dogs playing in the snow"])
    with torch.no_grad():
        trimmed = model.text(ids).pooled
        full = model.text(ids, return_tokens=True).pooled  # the token path keeps every position
    # fp32 rounding only (the two paths multiply different shapes); exactness in float64: test_last_block_keep
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
