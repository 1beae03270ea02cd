"""A saved head records the model it was fitted on and is refused on another one (issue 33: a few-shot head
fitted on the digits model ran silently with `classify --model tiny --head H`)."""
import json
import warnings
from pathlib import Path

import pytest
import torch

from clipforge.adapt import SupportSet, fit_fewshot, load_head
from clipforge.cli import main
from clipforge.encode import Encoder
from clipforge.errors import UsageError
from clipforge.zeroshot import classify
from clipforge.zeroshot.head_model import check_head_model, model_identity

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CKPT_SEED = 7  # the fitted-on model; "tiny" (seed 0 when loaded by name) is the other one


@pytest.fixture
def images(digits_demo):
    val = Path(digits_demo["val_dir"])
    return [str(sorted((val / str(d)).glob("*.png"))[0]) for d in range(3)]


@pytest.fixture(scope="module")
def zs_head(ckpt, digits_demo, tmp_path_factory):
    """A zero-shot head saved by `classify --save-head` on the checkpoint."""
    head = tmp_path_factory.mktemp("heads") / "digits"
    img = str(sorted((Path(digits_demo["val_dir"]) / "0").glob("*.png"))[0])
    assert main(["classify", "-m", ckpt, "--labels", ",".join(NAMES), "--templates", "photo",
                 "--save-head", str(head), img]) == 0
    return head


def _ours(record) -> list[str]:
    return [str(w.message) for w in record if "model" in str(w.message) and "head" in str(w.message)]


def test_saved_head_records_its_model(zs_head, ckpt):
    meta = json.loads(zs_head.with_suffix(".json").read_text())["meta"]
    rec = meta["model"]
    assert rec["name"] == ckpt and rec["dim"] == len(rec["probe"][0])
    assert rec == model_identity(Encoder.load(ckpt)) | {"name": ckpt}  # the same model measures the same probe


def test_cli_refuses_a_head_on_another_model_in_one_line(zs_head, ckpt, images, capsys):
    assert main(["classify", "-m", ckpt, "--head", str(zs_head), *images]) == 0  # its own model: fine
    out = capsys.readouterr()
    assert "fitted on" not in out.err and len(out.out.splitlines()) == 3
    assert main(["classify", "-m", "tiny", "--head", str(zs_head), *images]) == 2
    out = capsys.readouterr()
    err = out.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and not out.out
    assert repr(ckpt) in err and "'tiny'" in err and "--allow-other-model" in err
    # the override runs it, with a warning that names both
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["classify", "-m", "tiny", "--head", str(zs_head), "--allow-other-model", *images]) == 0
    msgs = _ours(record)
    assert len(msgs) == 1 and ckpt in msgs[0] and "tiny" in msgs[0]
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_same_model_on_another_engine_and_precision_is_accepted(zs_head, ckpt):
    head = load_head(zs_head)
    # ONNX Runtime with int8 weights embeds differently (to ~1e-3), yet it is the same model
    check_head_model(head, Encoder.load(ckpt, engine="onnx", precision="int8", device="cpu"))
    model = Encoder.load(ckpt).model
    check_head_model(head, model)
    with torch.no_grad():  # the same architecture with its weights shuffled is another model
        for p in model.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel())].view_as(p))
    with pytest.raises(UsageError, match="allow_other_model"):
        check_head_model(head, model)


def test_few_shot_head_records_and_checks_and_dims_differ(ckpt, tmp_path, images):
    from clipforge.models import create_model

    enc = Encoder.load(ckpt)
    labels = torch.arange(30) % 10  # the record comes from the encoder, whatever the support features are
    support = SupportSet.from_features(enc.encode_texts([f"{NAMES[i]} {j}" for j, i in enumerate(labels)]),
                                       labels, NAMES)
    head = fit_fewshot("linear-probe", enc, support)
    head.save(tmp_path / "probe")
    loaded = load_head(tmp_path / "probe")
    assert loaded.meta["model"]["name"] == ckpt
    assert len(list(classify(enc, images, head=loaded, k=2))) == 3
    with pytest.raises(UsageError, match="fitted on model .* not on 'tiny'"):
        classify(Encoder.load("tiny"), images, head=loaded)
    wide = create_model("tiny", embed_dim=32)  # another embedding size: refused, not a matmul traceback
    with pytest.raises(UsageError, match="64-d embeddings against this model's 32-d"):
        classify(wide, images, head=loaded)


def test_head_from_an_older_version_warns_and_runs(zs_head, images, tmp_path):
    old = tmp_path / "old"
    info = json.loads(zs_head.with_suffix(".json").read_text())
    del info["meta"]["model"]  # what heads saved before this field look like
    old.with_suffix(".json").write_text(json.dumps(info))
    old.with_suffix(".safetensors").write_bytes(zs_head.with_suffix(".safetensors").read_bytes())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        head = load_head(old)
    msgs = _ours(record)
    assert len(msgs) == 1 and "records no model" in msgs[0] and str(old) in msgs[0]
    assert len(list(classify(Encoder.load("tiny"), images, head=head))) == 3  # not refused


def test_registered_name_is_the_same_model_on_every_run(images, tmp_path, capsys):
    """`-m tiny` (no weights) initialises from a fixed seed in the CLI too, so its head is its own on a rerun."""
    head = str(tmp_path / "tiny-head")
    assert main(["classify", "-m", "tiny", "--labels", "cat,dog", "--save-head", head, *images]) == 0
    first = capsys.readouterr().out
    assert main(["classify", "-m", "tiny", "--head", head, *images]) == 0
    assert capsys.readouterr().out == first
