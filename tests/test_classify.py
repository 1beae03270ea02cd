"""`clipforge classify` and `clipforge.zeroshot.classify()`: end to end on a saved tiny model and the digits demo,
checked against a brute-force recomputation (preprocess -> encode -> softmax) written out here."""
import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipforge.cli import main
from clipforge.errors import UsageError
from clipforge.zeroshot import classify, read_labels

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

CKPT_SEED = 123  # the `ckpt` fixture (conftest.py) saves a tiny model initialised with this seed


@pytest.fixture(scope="module")
def model(ckpt):
    from clipforge.models import load_model

    return load_model(ckpt).eval()


@pytest.fixture
def images(digits_demo):
    val = Path(digits_demo["val_dir"])
    return [str(sorted((val / str(d)).glob("*.png"))[0]) for d in range(4)]


def brute_force_topk(model, paths, names, template, k):
    """Independent recomputation: single-template head, softmax(100 * f @ W.T)."""
    from PIL import Image

    with torch.no_grad():
        px = torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in paths])
        f = F.normalize(model.encode_image(px), dim=-1)
        w = F.normalize(model.encode_text(model.tokenizer([template.format(c=c) for c in names])), dim=-1)
        probs = (100.0 * f @ w.T).softmax(-1)
    s, i = probs.topk(k, dim=-1)
    return [[names[j] for j in row] for row in i.tolist()], s


def test_cli_files_match_brute_force_and_bad_files_are_counted(ckpt, model, images, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    rc = main(["classify", "-m", ckpt, "--labels", ",".join(NAMES), "--templates", "photo", "-k", "3", "--json",
               images[0], str(bad), images[1], str(tmp_path / "missing.jpg"), images[2]])
    out, err = capsys.readouterr()
    assert rc == 0
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["id"] for r in rows] == [images[0], images[1], images[2]]  # input order, bad ones left out
    labels, scores = brute_force_topk(model, images[:3], NAMES, "a photo of a {c}.", 3)
    assert [r["labels"] for r in rows] == labels
    torch.testing.assert_close(torch.tensor([r["scores"] for r in rows]), scores, atol=2e-5, rtol=1e-4)
    assert "skipped 2 unreadable image(s)" in err and "missing_file: 1" in err and "not_an_image: 1" in err


def test_plain_text_output(ckpt, images, capsys):
    assert main(["classify", "-m", ckpt, "--labels", "zero,one", "--templates", "photo", images[0]]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(images[0] + ": ") and line.count("(") == 2  # k=5 capped at the 2 classes


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_whole_source_to_file(ckpt, model, digits_demo, tmp_path, capsys, suffix):
    out = tmp_path / f"preds.{suffix}"
    rc = main(["classify", "-m", ckpt, "--labels-file", digits_demo["classnames"], "--templates", "photo",
               "-k", "2", "--out", str(out), "--batch-size", "64", digits_demo["val_dir"]])
    assert rc == 0 and "wrote 360 predictions" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp file left behind
    if suffix == "csv":
        with open(out, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["id", "label_1", "score_1", "label_2", "score_2"]
        ids, labs = [r[0] for r in rows[1:]], [[r[1], r[3]] for r in rows[1:]]
    else:
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        ids, labs = [r["id"] for r in rows], [r["labels"] for r in rows]
    assert len(ids) == 360 and ids[0].startswith("0/")
    val = Path(digits_demo["val_dir"])
    first = [str(val / i) for i in ids[:5]]
    assert labs[:5] == brute_force_topk(model, first, NAMES, "a photo of a {c}.", 2)[0]


def test_save_head_then_head_gives_same_predictions(ckpt, images, tmp_path, capsys):
    head = tmp_path / "heads" / "digits"
    args = ["classify", "-m", ckpt, "--json", "-k", "3", *images]
    assert main(args[:3] + ["--labels", ",".join(NAMES), "--templates", "openai_imagenet_7",
                            "--save-head", str(head)] + args[3:]) == 0
    first = capsys.readouterr().out
    assert (tmp_path / "heads" / "digits.safetensors").is_file() and (tmp_path / "heads" / "digits.json").is_file()
    assert main(args[:3] + ["--head", str(head)] + args[3:]) == 0
    assert capsys.readouterr().out == first


def test_zpe_uses_the_test_pool_and_reference(model, images, digits_demo):
    from clipforge.data.sources.filelist import open_inputs
    from clipforge.encode import as_encoder
    from clipforge.zeroshot.zeroshot_head import model_text_encoder
    from clipforge.zeroshot.zpe import build_zpe_classifier

    val = digits_demo["val_dir"]
    res = classify(model, images, NAMES, method="zpe", templates="openai_imagenet_7", reference=val, k=3,
                   progress=False)
    preds = list(res)
    assert res.head.meta["method"] == "zpe" and len(res.head.meta["prompt_weights"]) == 7
    # the same head, built by hand from the test images' features and the reference pool's
    test_f = as_encoder(model).encode_source(open_inputs(images), progress=False).feats
    ref_f = as_encoder(model).encode_source(open_inputs(val), progress=False).feats
    head = build_zpe_classifier(model_text_encoder(model), NAMES, test_f, ref_f, "openai_imagenet_7")
    torch.testing.assert_close(res.head.weights, head.weights)
    assert [p.labels for p in preds] == [[NAMES[j] for j in r] for r in head.topk(test_f, 3)[1].tolist()]


def test_description_methods(model, images, tmp_path):
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({n: [f"a handwritten {n}", f"the numeral {n} on a dark background"] for n in NAMES}))
    for method in ("cupl", "describe", "disclip"):
        preds = list(classify(model, images, NAMES, method=method, descriptions=str(desc), k=5, progress=False))
        assert len(preds) == 4
        want = 3 if method == "disclip" else 5  # DisCLIP rescoring keeps its top-3 candidates
        assert all(len(p.labels) == want and p.scores == sorted(p.scores, reverse=True) for p in preds), method
        if method == "describe":  # mean prompt probabilities: each in [0, 1]
            assert all(0.0 <= s <= 1.0 for p in preds for s in p.scores)


def test_all_unreadable_returns_1(ckpt, tmp_path, capsys):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"")
    assert main(["classify", "-m", ckpt, "--labels", "a,b", str(bad)]) == 1
    assert "empty_file" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--labels-file", "/nonexistent/names.txt"], "class-names file not found"),
    (["--labels", "a,b", "--labels-file", "x.txt"], "exactly one of --labels"),
    (["--labels", "a,b", "--descriptions", "d.json"], "--descriptions does not apply to zero-shot method 'mean'"),
    (["--labels", "a,b", "--method", "cupl"], "zero-shot method 'cupl' needs --descriptions"),
    (["--labels", "a,b", "--reference", "x"], "--reference"),
    (["--labels", "a,b", "--method", "describe", "--descriptions", "d.json", "--save-head", "h"], "--save-head"),
    (["--labels", "a,b", "--templates", "no_such_set"], "unknown template set"),
    (["--labels", "a,b", "--out", "preds.txt"], "--out must end in .csv or .jsonl"),
    (["--labels", "a,a"], "unique"),
    (["--head", "/nonexistent/head"], "head not found"),
    (["--labels", "a,b", "--workers", "-1"], "--workers"),
])
def test_bad_flags_name_the_flag(ckpt, images, capsys, extra, needle):
    rc = main(["classify", "-m", ckpt, *extra, images[0]])
    err = capsys.readouterr().err
    assert rc in (1, 2) and needle in err, err


def test_argparse_rejects_bad_k_and_method(ckpt, images, capsys):
    for extra in (["-k", "0"], ["--method", "nope"]):
        with pytest.raises(SystemExit) as e:
            main(["classify", "-m", ckpt, "--labels", "a,b", *extra, images[0]])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "-k/--top-k" in err and "--method" in err


def test_library_errors(model, images):
    with pytest.raises(UsageError, match="no class names"):
        classify(model, images, None)
    with pytest.raises(UsageError, match="either image files or exactly one source"):
        classify(model, [images[0], str(Path(images[0]).parent)], ["a", "b"])
    assert read_labels(" cat, dog ,,bird ") == ["cat", "dog", "bird"]
