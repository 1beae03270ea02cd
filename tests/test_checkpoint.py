import json

import pytest
import torch

from clipforge.errors import ClipforgeError, UsageError
from clipforge.models import create_model, load_model, train_tokenizer
from clipforge.models import checkpoint as ckpt


def _outputs(model):
    torch.manual_seed(3)
    px = torch.randn(2, 3, 32, 32)
    ids = model.tokenizer(["a photo of a dog", "the number seven"])
    with torch.no_grad():
        return model.encode_image(px), model.encode_text(ids)


def test_round_trip_bit_for_bit(tmp_path):
    tok = train_tokenizer(["a photo of a dog", "the number seven"] * 20, vocab_size=560, context_length=32)
    m = create_model("tiny", tokenizer=tok).eval()
    m.save_pretrained(tmp_path / "ck")
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == [".clipforge.json", "config.json", "model.safetensors", "preprocess.json", "tokenizer.json", "tokenizer_config.json"]
    m2 = load_model(tmp_path / "ck").eval()
    assert m2.config == m.config
    for a, b in zip(_outputs(m), _outputs(m2)):
        assert torch.equal(a, b)
    assert torch.equal(m2.tokenizer(["a photo of a dog"]), tok(["a photo of a dog"]))
    assert json.loads((tmp_path / "ck" / "preprocess.json").read_text())["image_size"] == 32


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    m = create_model("tiny")
    m.save_pretrained(tmp_path / "ck")
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with torch.no_grad():
        m.logit_scale.add_(1.0)
    with pytest.raises(RuntimeError):
        m.save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dirs left behind


def test_pickle_refused_unless_trusted(tmp_path):
    m = create_model("tiny")
    torch.save(m.state_dict(), tmp_path / "w.pt")
    with pytest.raises(UsageError, match="trust_pickle"):
        load_model("tiny", weights=tmp_path / "w.pt")
    m2 = load_model("tiny", weights=tmp_path / "w.pt", trust_pickle=True)
    for a, b in zip(_outputs(m.eval()), _outputs(m2.eval())):
        assert torch.equal(a, b)


def test_mismatched_weights_error_lists_keys(tmp_path):
    from safetensors.torch import save_file

    save_file({"bogus.weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ClipforgeError, match="unexpected.*bogus.weight"):
        load_model("tiny", weights=tmp_path / "w.safetensors")


def test_unknown_reference_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="cannot load model"):
        load_model(str(tmp_path / "nope"))


def test_weights_are_never_silently_ignored(tmp_path, monkeypatch):
    """A reference that carries its own weights refuses a separate weights file instead of dropping it."""
    from safetensors.torch import save_file

    create_model("tiny").save_pretrained(tmp_path / "ck")
    torch.manual_seed(5)
    other = create_model("tiny")
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(w))
    with pytest.raises(UsageError, match="`weights` does not apply to .*a clipforge checkpoint directory"):
        load_model(tmp_path / "ck", weights=w)
    # hf: references are refused before anything is downloaded
    import clipforge.models.convert as convert

    monkeypatch.setattr(convert, "download_hf", lambda *a, **k: pytest.fail("downloaded despite weights="))
    with pytest.raises(UsageError, match="`weights` does not apply to 'hf:org/name': a Hugging Face reference"):
        load_model("hf:org/name", weights=w)
    # a registered name does take them, and they are loaded
    loaded = load_model("tiny", weights=w).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in other.state_dict().items())
