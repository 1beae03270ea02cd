"""OpenAI-CLIP-layout state dicts -> clipforge, checked against a functional reference forward.

The reference below evaluates an OpenAI-layout state dict directly with torch's own
`F.multi_head_attention_forward` (fused in_proj, as OpenAI's nn.MultiheadAttention did), written from the
published model definition, independently of clipforge's layers and of the converter's key mapping.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from clipforge.errors import ClipforgeError
from clipforge.models import create_model, default_tokenizer, load_model
from clipforge.models.convert.openai import infer_config, state_to_openai


def _qgelu(x):
    return x * torch.sigmoid(1.702 * x)


def _resblocks(sd, prefix, x, heads, mask=None):  # x (L, B, W) as OpenAI's code runs it
    i = 0
    while f"{prefix}.resblocks.{i}.ln_1.weight" in sd:
        p = f"{prefix}.resblocks.{i}"
        W = x.shape[-1]
        h = F.layer_norm(x, (W,), sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"])
        a, _ = F.multi_head_attention_forward(
            h, h, h, W, heads, sd[f"{p}.attn.in_proj_weight"], sd[f"{p}.attn.in_proj_bias"], None, None, False, 0.0,
            sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"], need_weights=False, attn_mask=mask)
        x = x + a
        h = F.layer_norm(x, (W,), sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"])
        h = F.linear(_qgelu(F.linear(h, sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"])),
                     sd[f"{p}.mlp.c_proj.weight"], sd[f"{p}.mlp.c_proj.bias"])
        x = x + h
        i += 1
    return x


def reference_openai(sd, pixels, ids, v_heads, t_heads):
    """OpenAI CLIP ViT forward from its state dict: (image features, text features, logit scale)."""
    W = sd["visual.conv1.weight"].shape[0]
    ps = sd["visual.conv1.weight"].shape[-1]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=ps).flatten(2).permute(0, 2, 1)  # (B, g*g, W)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (W,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _resblocks(sd, "visual.transformer", x.permute(1, 0, 2), v_heads).permute(1, 0, 2)
    img = F.layer_norm(x[:, 0], (W,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    T, Wt = ids.shape[1], sd["ln_final.weight"].shape[0]
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:T]
    mask = torch.full((T, T), float("-inf")).triu_(1)
    t = _resblocks(sd, "transformer", t.permute(1, 0, 2), t_heads, mask).permute(1, 0, 2)
    t = F.layer_norm(t, (Wt,), sd["ln_final.weight"], sd["ln_final.bias"])
    txt = t[torch.arange(t.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
    return img, txt, sd["logit_scale"].exp()


def _openai_state(seed=0):
    """A random OpenAI-layout state dict (head width 64, as OpenAI's rule), with non-trivial LN/bias values."""
    torch.manual_seed(seed)
    m = create_model("tiny", vision={"pool": "cls", "act": "quick_gelu", "width": 128, "heads": 2},
                     text={"act": "quick_gelu", "width": 128, "heads": 2})
    sd = state_to_openai(m.state_dict(), m.config)
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=g) if ("ln_" in k or "bias" in k) else v
            for k, v in sd.items()}


def test_openai_state_dict_file_matches_reference(tmp_path):
    sd = _openai_state()
    f = tmp_path / "openai.safetensors"
    save_file(sd, str(f))
    with pytest.raises(ClipforgeError, match="no tokenizer for its 1024-id text tower"):  # none known: refused
        load_model(str(f))
    with pytest.warns(UserWarning, match="heads guessed"):  # the caller names the tokenizer (here: byte-level)
        model = load_model(str(f), tokenizer=default_tokenizer())
    c = model.config
    assert (c.vision.heads, c.text.heads, c.vision.act, c.vision.image_size, c.embed_dim) == (2, 2, "quick_gelu", 32, 64)
    pixels, ids = torch.randn(3, 3, 32, 32), torch.randint(0, 1000, (4, 12))
    ids[:, 7] = 1023  # the end token: highest id, pooled by argmax
    with torch.no_grad():
        img, txt, scale = reference_openai(sd, pixels, ids, 2, 2)
        img2, txt2 = model.encode_image(pixels, normalize=False), model.encode_text(ids, normalize=False)
    assert (img - img2).abs().max() < 1e-5 and (txt - txt2).abs().max() < 1e-5
    assert torch.allclose(model.logit_scale.exp(), scale)


def test_module_prefix_and_jit_metadata_are_accepted(tmp_path):
    sd = {f"module.{k}": v for k, v in _openai_state().items()}
    sd["module.input_resolution"] = torch.tensor(32)
    f = tmp_path / "ddp.safetensors"
    save_file(sd, str(f))
    with pytest.warns(UserWarning, match="heads guessed"):
        assert load_model(str(f), tokenizer=default_tokenizer()).config.vision.layers == 2


def test_leftover_keys_listed(tmp_path):
    sd = _openai_state()
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(128)  # layer-scale: not a native feature
    f = tmp_path / "ls.safetensors"
    save_file(sd, str(f))
    with pytest.raises(ClipforgeError, match="ls_1.gamma"):
        load_model(str(f))


def test_resnet_and_pickles_refused(tmp_path):
    with pytest.raises(ClipforgeError, match="ResNet"):
        infer_config({"visual.layer1.0.conv1.weight": torch.zeros(1), "token_embedding.weight": torch.zeros(1)})
    torch.save(_openai_state(), tmp_path / "w.pt")
    with pytest.raises(ClipforgeError, match="pickle"):
        load_model(str(tmp_path / "w.pt"))
    with pytest.warns(UserWarning, match="heads guessed"):
        model = load_model(str(tmp_path / "w.pt"), trust_pickle=True, tokenizer=default_tokenizer())
    assert model.config.text.layers == 2
