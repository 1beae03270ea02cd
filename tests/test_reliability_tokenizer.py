"""Never silently wrong: an open_clip / OpenAI checkpoint loads only with its real tokenizer.

clipforge does not ship OpenAI's BPE (its 48,894 merges are learned data that no rule rebuilds; the copy in
tests/golden is a test fixture, not package data), so without open_clip installed the tokenizer must come from
the caller (`tokenizer`), from the files beside the weights, or the load is refused with one line saying how to
provide one. Where it is found, its ids are checked against open_clip's own on the 2,400 golden captions.
"""
from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clipforge.cli import main
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models import create_model, default_tokenizer, load_model, train_tokenizer
from clipforge.models.convert.export import export_model
from clipforge.models.convert.openai import state_to_openai

GOLDEN = Path(__file__).parent / "golden"
BPE = GOLDEN / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture
def no_open_clip(monkeypatch):
    """An environment without open_clip, even where it is installed: `import open_clip` fails."""
    monkeypatch.setitem(sys.modules, "open_clip", None)


def _model(vocab: int, ctx: int):
    torch.manual_seed(0)
    return create_model("tiny", vision={"pool": "cls", "act": "quick_gelu", "width": 64, "heads": 1},
                        text={"act": "quick_gelu", "width": 64, "heads": 1, "vocab_size": vocab,
                              "context_length": ctx})


@pytest.fixture(scope="module")
def openai_weights(tmp_path_factory):
    """OpenAI-layout weights of a 49408-id, 77-token text tower (OpenAI's vocabulary), alone in a directory."""
    m = _model(49408, 77)
    d = tmp_path_factory.mktemp("openai")
    save_file(state_to_openai(m.state_dict(), m.config), str(d / "ViT-tiny.safetensors"))
    return d / "ViT-tiny.safetensors"


def _load(path, **kw):
    return load_model(str(path), vision_heads=1, text_heads=1, **kw)


# -------------------------------------------------------------------------------------------- refusals
@pytest.mark.usefixtures("no_open_clip")
def test_openai_vocab_without_open_clip_or_files_is_refused_in_one_line(openai_weights):
    with pytest.raises(ClipforgeError) as e:
        _load(openai_weights)
    msg = str(e.value)
    assert "\n" not in msg and "no tokenizer" in msg
    for how in ("pip install open_clip_torch", "tokenizer.json", "bpe_simple_vocab_16e6.txt.gz", "`tokenizer`"):
        assert how in msg, how  # the message says every way to provide one


@pytest.mark.usefixtures("no_open_clip")
def test_unknown_vocab_is_refused_and_open_clip_is_not_offered(tmp_path):
    m = _model(1024, 32)
    save_file(state_to_openai(m.state_dict(), m.config), str(tmp_path / "w.safetensors"))
    with pytest.raises(ClipforgeError, match="1024-id text tower") as e:
        _load(tmp_path / "w.safetensors")
    assert "open_clip_torch" not in str(e.value)  # installing it would not help a non-OpenAI vocabulary


@pytest.mark.usefixtures("no_open_clip")
def test_open_clip_directory_without_tokenizer_is_refused(tmp_path):
    out = export_model(_model(1024, 32), "open_clip", tmp_path / "oc")
    shutil.rmtree(out / "clipforge_tokenizer")  # as open_clip writes it: config + weights only
    with pytest.raises(ClipforgeError, match="no tokenizer for its 1024-id text tower"):
        load_model(str(out))
    assert load_model(str(tmp_path / "oc"), tokenizer=default_tokenizer()).tokenizer.vocab_size == 514


@pytest.mark.usefixtures("no_open_clip")
def test_cli_refuses_with_the_flag_and_loads_with_it(openai_weights, capsys):
    args = ["embed", "--model", str(openai_weights), "--heads", "1,1", "--text", "a photo of a cat"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tokenizer" in err[0] and "--tokenizer" in err[0]  # the CLI names its flag
    assert main([*args, "--tokenizer", str(BPE)]) == 0
    assert "no tokenizer" not in capsys.readouterr().err


def test_a_bad_tokenizer_argument_is_a_one_line_usage_error(openai_weights, tmp_path, ckpt):
    with pytest.raises(UsageError, match="not a tokenizer directory"):
        _load(openai_weights, tokenizer=tmp_path)  # an empty directory
    (tmp_path / "bpe.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(ClipforgeError, match="not a readable BPE merges file"):
        _load(openai_weights, tokenizer=tmp_path / "bpe.txt.gz")
    with pytest.raises(UsageError, match="carries its own"):
        load_model(ckpt, tokenizer=default_tokenizer())


# ------------------------------------------------------------------------- found: ids as open_clip's
@pytest.fixture(scope="module")
def golden():
    pytest.importorskip("ftfy")  # open_clip cleans with ftfy; without it only quotes are straightened
    with gzip.open(GOLDEN / "tokenizer_open_clip.json.gz", "rt", encoding="utf-8") as f:
        g = json.load(f)
    ref = torch.zeros(len(g["ids"]), g["context_length"], dtype=torch.long)
    for i, r in enumerate(g["ids"]):
        ref[i, : len(r)] = torch.tensor(r)
    return g["captions"], ref


def _assert_open_clip_ids(tok, golden):
    captions, ref = golden
    ours = tok(captions, truncate="silent")
    bad = [captions[i] for i in (ours != ref).any(1).nonzero().flatten().tolist()]
    assert not bad, f"{len(bad)} of {len(captions)} captions differ from open_clip, e.g. {bad[:3]!r}"


def _openai_bytes_to_unicode():  # OpenAI CLIP's simple_tokenizer.bytes_to_unicode, verbatim in effect
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _write_vocab_merges(d: Path) -> None:
    """vocab.json + merges.txt as OpenAI's SimpleTokenizer builds its vocabulary from the merges file (and as
    the hub's copies of CLIP tokenizers hold it)."""
    merges = gzip.open(BPE).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(_openai_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")


@pytest.mark.usefixtures("no_open_clip")
@pytest.mark.parametrize("files", ["vocab_merges", "tokenizer_json", "bpe_file"])
def test_tokenizer_files_beside_the_weights_give_open_clips_ids(files, openai_weights, tmp_path, golden):
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(openai_weights, d / "w.safetensors")
    if files == "bpe_file":
        shutil.copy(BPE, d / BPE.name)
    elif files == "vocab_merges":
        _write_vocab_merges(d)
    else:  # the same tokenizer as transformers saves it, tokenizer.json alone
        transformers = pytest.importorskip("transformers")
        _write_vocab_merges(tmp_path)
        hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
        hf.save_pretrained(d)
        for f in ("vocab.json", "merges.txt"):
            (d / f).unlink(missing_ok=True)
        assert (d / "tokenizer.json").is_file()
        # read as transformers would, the files would NOT give open_clip's ids (no ftfy / HTML unescaping,
        # its own special-token rule): the layout check is what makes them open_clip's tokenizer
        captions, ref = golden
        hf_ids = hf(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
        assert ((hf_ids != ref) & (ref != 0)).any(1).sum() > 0
    model = _load(d / "w.safetensors")
    _assert_open_clip_ids(model.tokenizer, golden)
    assert model.tokenizer.context_length == 77 and model.tokenizer.pad_id == 0


@pytest.mark.usefixtures("no_open_clip")
def test_explicit_tokenizer_loads_and_is_not_altered(openai_weights, golden, tmp_path):
    _assert_open_clip_ids(_load(openai_weights, tokenizer=BPE).tokenizer, golden)  # OpenAI's merges file
    _write_vocab_merges(tmp_path)
    _assert_open_clip_ids(_load(openai_weights, tokenizer=tmp_path).tokenizer, golden)  # a tokenizer directory
    mine = default_tokenizer(16)
    model = _load(openai_weights, tokenizer=mine)  # an object: used as given (the caller vouches for it)
    assert model.tokenizer.vocab_size == 514 and model.tokenizer.context_length == 77
    assert mine.context_length == 16  # the model got a copy at its own context length


def test_files_beside_the_weights_win_over_an_installed_open_clip(openai_weights, tmp_path, monkeypatch, golden):
    """A stand-in `open_clip` package holding OpenAI's BPE (as the real one does) is found without being
    imported; a checkpoint's own tokenizer beside its weights is preferred to it."""
    pkg = tmp_path / "site" / "open_clip"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('imported: finding the BPE file must not import it')\n")
    shutil.copy(BPE, pkg / BPE.name)
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _assert_open_clip_ids(_load(openai_weights).tokenizer, golden)  # alone in its directory: open_clip's BPE
    d = tmp_path / "custom"
    d.mkdir()
    shutil.copy(openai_weights, d / "w.safetensors")
    custom = train_tokenizer(golden[0], vocab_size=600, context_length=77)
    custom.save(d)  # clipforge's own tokenizer files beside the weights
    tok = _load(d / "w.safetensors").tokenizer
    texts = golden[0][:50]
    assert tok.vocab_size == 600 and torch.equal(tok(texts, truncate="silent"), custom(texts, truncate="silent"))
