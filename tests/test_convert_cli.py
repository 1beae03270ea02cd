"""Export CLI, `models --pretrained`, hub access (offline / unreachable / cached), and one end-to-end check
that a model converted from HF layout is a full clipforge model: save_pretrained, reload, encode, train a step.
"""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from clipforge.cli import main  # noqa: E402
from clipforge.errors import ClipforgeError  # noqa: E402
from clipforge.models import load_model  # noqa: E402
from clipforge.models.convert.hub import download_hf  # noqa: E402


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hfclip")
    text = dict(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, eos_token_id=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
                           ).save_pretrained(d)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    from clipforge.models import default_tokenizer
    from clipforge.models.convert.hf_files import save_hf_tokenizer

    save_hf_tokenizer(default_tokenizer(16), d, "clip")  # the byte-level BPE, written as HF tokenizer files
    return d


def test_converted_model_saves_reloads_encodes_and_trains(tmp_path, hf_clip_dir, rgb_image):
    model = load_model(str(hf_clip_dir))
    model.save_pretrained(tmp_path / "cf")
    back = load_model(str(tmp_path / "cf"))
    assert back.config == model.config
    texts = ["a photo of a cat", "a dog, running!"]
    assert torch.equal(back.tokenizer(texts), model.tokenizer(texts))
    pixels = torch.stack([back.preprocess(rgb_image), back.preprocess(rgb_image.transpose(0))])  # (2, 3, 32, 32)
    with torch.no_grad():
        for a, b in ((model.encode_image(pixels), back.encode_image(pixels)),
                     (model.encode_text(model.tokenizer(texts)), back.encode_text(back.tokenizer(texts)))):
            assert a.shape == (2, 16) and torch.allclose(a, b, atol=1e-6)
            assert torch.allclose(a.norm(dim=-1), torch.ones(2))
    back.train()
    opt = torch.optim.SGD(back.parameters(), lr=0.1)
    out = back(torch.stack([back.preprocess_train(rgb_image)] * 2), back.tokenizer(texts))
    logits = out.logit_scale * out.image_embeds @ out.text_embeds.T
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    loss.backward()
    assert all(p.grad is not None for p in back.parameters() if p.requires_grad)
    opt.step()


def test_cli_export_hf_and_refusal(tmp_path, hf_clip_dir, capsys):
    assert main(["export", str(hf_clip_dir), "--to", "hf", "--out", str(tmp_path / "out")]) == 0
    assert transformers.CLIPModel.from_pretrained(tmp_path / "out").config.projection_dim == 16
    assert main(["export", "tiny", "--to", "hf", "--out", str(tmp_path / "bad")]) == 2
    assert "vision.pool=cls" in capsys.readouterr().err
    assert main(["export", "tiny", "--to", "open_clip", "--out", str(tmp_path / "bad")]) == 2


def test_models_pretrained_lists_refs(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    refs = {r["ref"]: r for r in rows}
    assert "hf:openai/clip-vit-base-patch32" in refs and "hf:google/siglip-base-patch16-224" in refs
    assert all(r["download_mb"] > 100 and r["needs_network"] for r in rows)  # nothing cached on a test machine
    assert main(["models", "--pretrained"]) == 0 and "needed" in capsys.readouterr().out


def test_hub_offline_and_unreachable_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipforgeError, match="HF_HUB_OFFLINE"):
        download_hf("someorg/somemodel", cache_dir=str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(C, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused at once
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False, raising=False)
    with pytest.raises(ClipforgeError, match="unreachable"):
        download_hf("someorg/somemodel", cache_dir=str(tmp_path))
    with pytest.raises(ClipforgeError):
        load_model("hf:not-a-valid-ref")


def test_hf_ref_loads_from_cache_offline(tmp_path, hf_clip_dir, monkeypatch):
    """A snapshot laid out as huggingface_hub's cache loads through `hf:` with HF_HUB_OFFLINE=1."""
    import shutil

    import huggingface_hub.constants as C

    commit = "0" * 40
    repo = tmp_path / "models--someorg--tiny-clip"
    shutil.copytree(hf_clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path))
    model = load_model("hf:someorg/tiny-clip")
    assert model.config.embed_dim == 16 and model.config.text.pool == "argmax"
