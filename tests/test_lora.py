"""LoRA / Comp-LoRA adapters: parameter counts from the config, gradients only in the adapter, merge == base +
adapter, Comp-LoRA's update free of the base's top singular directions, adapter directories as model references
(`BASE+ADAPTER`, hash-checked), and the peft export loading onto the HF export of the base in transformers + peft."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipforge.errors import UsageError
from clipforge.models import LoRAConfig, apply_lora, create_model, load_model, merge_lora, save_adapter
from clipforge.models.adapter import base_hash, merged_model
from clipforge.models.lora import lora_modules, lora_parameter_count, target_names


def _inputs(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(n, 3, 32, 32, generator=g)
    ids = torch.randint(1, model.config.text.vocab_size - 1, (n, 12), generator=g)
    ids[:, -1] = model.config.text.vocab_size - 1  # the end token (highest id) for argmax pooling
    return px, ids


def _randomise_lora(model, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * scale)
            m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * scale)


def _embeds(model, px, ids):
    model.eval()
    with torch.no_grad():
        return model.encode_image(px), model.encode_text(ids)


def test_parameter_count_is_rank_times_in_plus_out(tiny_model):
    cfg = tiny_model.config
    r = 4
    apply_lora(tiny_model, LoRAConfig(rank=r, targets=("attn.qkv", "attn.out", "mlp.*", "proj")))
    expected = 0
    for tower in (cfg.vision, cfg.text):
        w, hidden = tower.width, int(tower.width * tower.mlp_ratio)
        per_block = r * (w + 3 * w) + r * (w + w) + r * (w + hidden) + r * (hidden + w)
        expected += tower.layers * per_block + r * (w + cfg.embed_dim)  # + the tower's output projection
    trainable = sum(p.numel() for p in tiny_model.parameters() if p.requires_grad)
    assert lora_parameter_count(tiny_model) == trainable == expected


def test_only_adapter_parameters_get_gradients_and_base_stays(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    apply_lora(tiny_model, LoRAConfig(rank=2))
    opt = torch.optim.SGD([p for p in tiny_model.parameters() if p.requires_grad], lr=0.5)
    px, ids = _inputs(tiny_model)
    for _ in range(2):  # B starts at zero: A's gradient is zero on step one, not after
        out = tiny_model.train()(px, ids)
        (out.image_embeds @ out.text_embeds.T).diag().sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    for name, p in tiny_model.named_parameters():
        is_lora = name.endswith((".lora_A", ".lora_B"))
        assert (p.grad is not None) == is_lora, name
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base weights did not move
    moved = [m for m in lora_modules(tiny_model).values() if m.lora_B.abs().sum() > 0]
    assert moved, "the adapter did not learn anything"


@pytest.mark.parametrize("method,side", [("lora", "left"), ("comp-lora", "left"), ("comp-lora", "right"),
                                         ("comp-lora", "both")])
def test_merged_weights_match_base_plus_adapter(tiny_model, method, side):
    px, ids = _inputs(tiny_model)
    base_img, base_txt = _embeds(tiny_model, px, ids)
    apply_lora(tiny_model, LoRAConfig(method=method, rank=3, comp_k=8, comp_side=side,
                                      targets=("attn.*", "mlp.fc", "proj")))
    img0, txt0 = _embeds(tiny_model, px, ids)
    assert torch.allclose(img0, base_img, atol=1e-6) and torch.allclose(txt0, base_txt, atol=1e-6)  # B = 0
    _randomise_lora(tiny_model)
    img, txt = _embeds(tiny_model, px, ids)
    assert (img - base_img).abs().max() > 1e-2  # the adapter changes the outputs ...
    copy = merged_model(tiny_model)
    m_img, m_txt = _embeds(copy, px, ids)
    assert (m_img - img).abs().max() <= 1e-5 and (m_txt - txt).abs().max() <= 1e-5  # ... and merging keeps them
    merge_lora(tiny_model)
    assert not lora_modules(tiny_model)
    i2, t2 = _embeds(tiny_model, px, ids)
    assert (i2 - img).abs().max() <= 1e-5 and (t2 - txt).abs().max() <= 1e-5


def test_comp_lora_update_avoids_top_singular_directions(tiny_model):
    k = 8
    names = apply_lora(tiny_model, LoRAConfig(method="comp-lora", rank=4, comp_k=k, comp_side="both"))
    _randomise_lora(tiny_model)
    for name in names:
        mod = tiny_model.get_submodule(name)
        u, _, vh = torch.linalg.svd(mod.weight.detach(), full_matrices=False)
        dw = mod.delta_weight().detach()
        assert (u[:, :k].T @ dw).abs().max() < 1e-5  # writes nothing along W's top-k output directions
        assert (dw @ vh[:k].T).abs().max() < 1e-5  # reads nothing along W's top-k input directions
        assert (u[:, k:].T @ dw).abs().max() > 1e-3  # but it is not zero
    plain = create_model("tiny")
    apply_lora(plain, LoRAConfig(rank=4))
    _randomise_lora(plain)
    mod = next(iter(lora_modules(plain).values()))
    u = torch.linalg.svd(mod.weight.detach(), full_matrices=False)[0]
    assert (u[:, :k].T @ mod.delta_weight().detach()).abs().max() > 1e-3  # plain LoRA has no such constraint


def test_targets_layers_and_errors(tiny_model):
    names = target_names(tiny_model, LoRAConfig(targets=("mlp.*", "proj"), towers=("image",), layers=(-1,)))
    assert names == ["visual.transformer.blocks.1.mlp.fc", "visual.transformer.blocks.1.mlp.proj", "visual.proj"]
    with pytest.raises(UsageError, match="match no Linear layer.*attn.qkv"):
        target_names(tiny_model, LoRAConfig(targets=("attn.qkvv",)))
    with pytest.raises(UsageError, match="`layers`"):
        target_names(tiny_model, LoRAConfig(layers=(5,)))
    with pytest.raises(UsageError, match="`towers`"):
        LoRAConfig(towers=("audio",))
    with pytest.raises(UsageError, match="`rank`"):
        LoRAConfig(rank=0)
    apply_lora(tiny_model, LoRAConfig())
    with pytest.raises(UsageError, match="already carries"):
        apply_lora(tiny_model, LoRAConfig())
    with pytest.raises(UsageError, match="save_adapter"):
        tiny_model.save_pretrained("/nonexistent/never-written")


def test_resnet_image_tower_adapts_its_attention_pool():
    """A ResNet image tower has no transformer blocks: its attention-pool projections are the Linear targets, and
    a target list that leaves one requested tower with nothing to adapt is refused by name."""
    torch.manual_seed(0)
    model = create_model("tiny-resnet")
    with pytest.raises(UsageError, match="no layer of the image tower.*attnpool.q_proj"):
        target_names(model, LoRAConfig(targets=("attn.qkv",)))
    cfg = LoRAConfig(rank=2, targets=("attn.qkv", "attnpool.*"), layers=(-1,))
    names = target_names(model, cfg)
    assert [n for n in names if n.startswith("visual.")] == [
        f"visual.attnpool.{p}_proj" for p in ("q", "k", "v", "c")]
    assert names[-1] == "text.transformer.blocks.1.attn.qkv"  # `layers` still restricts the text blocks
    px, ids = _inputs(model)
    apply_lora(model, cfg)
    _randomise_lora(model)
    img, txt = _embeds(model, px, ids)
    merge_lora(model)
    img2, txt2 = _embeds(model, px, ids)
    assert torch.allclose(img, img2, atol=1e-5) and torch.allclose(txt, txt2, atol=1e-5)


def test_dropout_only_in_training(tiny_model):
    apply_lora(tiny_model, LoRAConfig(rank=4, dropout=0.5))
    _randomise_lora(tiny_model)
    px, ids = _inputs(tiny_model)
    tiny_model.train()
    with torch.no_grad():
        a, b = tiny_model.encode_image(px), tiny_model.encode_image(px)
    assert (a - b).abs().max() > 1e-4
    e1, _ = _embeds(tiny_model, px, ids)
    e2, _ = _embeds(tiny_model, px, ids)
    assert torch.equal(e1, e2)


def test_adapter_directory_is_a_model_reference(tiny_checkpoint, tmp_path):
    base_dir = tiny_checkpoint(0)
    model = load_model(base_dir)
    h = base_hash(model)
    apply_lora(model, LoRAConfig(method="comp-lora", rank=2, comp_k=4))
    assert base_hash(model) == h  # adapter tensors are not part of the base's hash
    _randomise_lora(model)
    px, ids = _inputs(model)
    want = _embeds(model, px, ids)
    out = save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["base_hash"] == h and meta["lora"]["method"] == "comp-lora"
    assert meta["num_parameters"] == lora_parameter_count(model)
    assert (out / "adapter.safetensors").stat().st_size < (Path(base_dir) / "model.safetensors").stat().st_size / 4
    for ref in (f"{base_dir}+{out}", str(out)):  # explicit base, or the one the adapter names
        got = _embeds(load_model(ref), px, ids)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    other = tiny_checkpoint(1)
    with pytest.raises(UsageError, match="content hash"):
        load_model(f"{other}+{out}")


def test_peft_export_loads_onto_hf_export_with_same_embeddings(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from clipforge.models.convert.export import export_model
    from clipforge.models.convert.peft_export import export_peft

    torch.manual_seed(0)
    model = create_model("tiny", vision={"pool": "cls", "act": "quick_gelu"}, text={"act": "quick_gelu"}).eval()
    px, ids = _inputs(model)
    apply_lora(model, LoRAConfig(method="comp-lora", rank=3, comp_k=8, comp_side="both",
                                 targets=("attn.qkv", "attn.out", "mlp.*", "proj")))
    _randomise_lora(model)
    want_img, want_txt = _embeds(model, px, ids)
    # The base goes out without the adapter, the adapter on its own in peft's format.
    base = create_model("tiny", vision={"pool": "cls", "act": "quick_gelu"}, text={"act": "quick_gelu"})
    base.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k and "comp_" not in k})
    export_model(base, "hf", tmp_path / "hf")
    export_peft(model, tmp_path / "peft")
    hf = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft")).eval()
    n_lora = sum(1 for n, _ in pm.named_modules() if n.endswith("lora_A.default"))
    assert n_lora == 2 * 2 * (3 + 1 + 2) + 2  # per block: q, k, v, out, fc1, fc2; plus both projections
    with torch.no_grad():
        img = pm.get_image_features(pixel_values=px)
        txt = pm.get_text_features(input_ids=ids)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    img, txt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    assert (img - want_img).abs().max() <= 1e-5
    assert (txt - want_txt).abs().max() <= 1e-5
    with pm.disable_adapter(), torch.no_grad():  # and the adapter matters there
        plain = pm.get_image_features(pixel_values=px)
    plain = torch.nn.functional.normalize(getattr(plain, "pooler_output", plain), dim=-1)
    assert (plain - want_img).abs().max() > 1e-2
    # export of the adapted model merges it: transformers alone reproduces base + adapter
    export_model(model, "hf", tmp_path / "merged")
    merged = transformers.CLIPModel.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        m_img = merged.get_image_features(pixel_values=px)
    m_img = torch.nn.functional.normalize(getattr(m_img, "pooler_output", m_img), dim=-1)
    assert (m_img - want_img).abs().max() <= 1e-5
