"""The image-caption-selection task (SugarCrepe / Winoground scores) and `clipforge data negatives`.

Parity: CLIP_benchmark's own `image_caption_selection.evaluate` on fixed embeddings (tests/golden/
image_caption_selection.*, written by tools/make_selection_golden.py in the reference environment) against
clipforge's metric on the same embeddings. End to end: the task's numbers from the CLI against a recomputation
with the model's encode_image / encode_text by hand.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.cli import main
from clipforge.data.negatives import ATTRIBUTES, KINDS, OBJECTS, RELATIONS, make_negative, write_negatives
from clipforge.data.sources import open_source
from clipforge.evaluate import run_eval
from clipforge.metrics.caption_selection import selection_metrics
from clipforge.models import load_model

GOLDEN = Path(__file__).parent / "golden"


def test_same_embeddings_give_clip_benchmarks_numbers():
    ref = json.loads((GOLDEN / "image_caption_selection.json").read_text())
    arrays = np.load(GOLDEN / "image_caption_selection.npz")
    for name, shape in ref["groups"].items():
        images, texts = arrays[f"{name}/images"], arrays[f"{name}/texts"]
        assert images.shape[:2] == (shape["instances"], shape["images"])
        got, counts = selection_metrics((i, t, name) for i, t in zip(images, texts))
        want = ref["metrics"][name]
        n = shape["instances"]
        if shape["images"] == 1:  # SugarCrepe form: CLIP_benchmark's text_acc (its image_acc is 1 by construction)
            pairs = [("acc", "text_acc"), ("acc", "acc")]
            assert want["image_acc"] == 1.0 and counts["selection"] == n
        else:
            pairs = [("text_score", "text_acc"), ("image_score", "image_acc"), ("group_score", "acc")]
            assert counts["groups"] == n
        for ours, theirs in pairs:
            # the same number of correct instances (CLIP_benchmark averages in float32)
            assert round(got[ours] * n) == round(want[theirs] * n), (name, ours)
            assert got[ours] == pytest.approx(want[theirs], abs=1e-6), (name, ours)
    # the golden is not degenerate: neither chance-free nor perfect, and the tie groups are mixed
    accs = [ref["metrics"][g]["acc"] for g in ref["groups"]]
    assert all(0.0 < a < 1.0 for a in accs)


def test_ties_go_to_the_positive_and_a_better_negative_wins():
    img = np.array([[1.0, 0.0]])
    same, better = np.array([[0.6, 0.8], [0.6, 0.8]]), np.array([[0.6, 0.8], [1.0, 0.0]])
    m, _ = selection_metrics([(img, same, "t"), (img, better, "u")])
    assert m["acc/t"] == 1.0 and m["acc/u"] == 0.0 and m["acc"] == 0.5


def _image(path: Path, colour) -> str:
    Image.new("RGB", (40, 40), colour).save(path)
    return str(path)


@pytest.fixture
def selection_file(tmp_path):
    red, blue = _image(tmp_path / "red.png", (220, 20, 20)), _image(tmp_path / "blue.png", (20, 20, 220))
    green = _image(tmp_path / "green.png", (20, 200, 20))
    lines = [
        {"image": "red.png", "positive": "a red square", "negatives": ["a blue square", "a green square"],
         "type": "replace-attribute"},
        {"image": blue, "positive": "a blue square", "negatives": ["a square blue"], "type": "shuffle"},
        {"image": "green.png", "positive": "a green square", "negatives": ["a red square"], "type": "replace-attribute"},
        {"image": "missing.png", "positive": "nothing", "negatives": ["no thing"], "type": "shuffle"},
        {"images": ["red.png", "blue.png"], "captions": ["a red square", "a blue square"], "type": "colour"},
        {"images": [green, red], "captions": ["a green square", "a red square"], "type": "colour"},
        {"image": "red.png", "positive": "a red square"},  # no negatives: not an instance
    ]
    path = tmp_path / "sel.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    return path


def _by_hand(ckpt, path):
    """Per instance: (type, is_group, text correct, image correct), from encode_image / encode_text directly."""
    model = load_model(ckpt).eval()
    out = []
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if "images" in obj:
            images, captions = obj["images"], obj["captions"]
        elif obj.get("negatives"):
            images, captions = [obj["image"]], [obj["positive"], *obj["negatives"]]
        else:
            continue
        files = [Path(p) if Path(p).is_absolute() else path.parent / p for p in images]
        if not all(f.exists() for f in files):
            continue
        with torch.no_grad():
            im = model.encode_image(torch.stack([model.preprocess(Image.open(f).convert("RGB")) for f in files]))
            tx = model.encode_text(model.tokenizer(captions))
        s = (im @ tx.T).numpy()
        g = min(s.shape)
        out.append((obj["type"], len(images) > 1, all(s[i].argmax() == i for i in range(g)),
                    all(s[:, j].argmax() == j for j in range(g))))
    return out


def test_the_task_from_the_cli_matches_a_recomputation(ckpt, selection_file, tmp_path, capsys):
    out = tmp_path / "res.jsonl"
    assert main(["eval", "-m", ckpt, "--task", "image-caption-selection", "-d", str(selection_file),
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    hand = _by_hand(ckpt, selection_file)
    sel = [h for h in hand if not h[1]]
    grp = [h for h in hand if h[1]]
    m = rec["metrics"]
    assert m["n"] == 5 and rec["counts"] == {"selection": 3, "groups": 2,
                                             "per_type": {"colour": 2, "replace-attribute": 2, "shuffle": 1}}
    assert m["acc"] == pytest.approx(np.mean([h[2] for h in sel]))
    assert m["acc/replace-attribute"] == pytest.approx(np.mean([h[2] for h in sel if h[0] == "replace-attribute"]))
    assert m["text_score"] == pytest.approx(np.mean([h[2] for h in grp]))
    assert m["image_score"] == pytest.approx(np.mean([h[3] for h in grp]))
    assert m["group_score"] == pytest.approx(np.mean([h[2] and h[3] for h in grp]))
    # the two lines that are not instances, and the one whose image is missing, are counted
    assert rec["skipped"]["by_reason"]["bad_record"] == 2
    assert sum(v for k, v in rec["skipped"]["by_reason"].items() if k != "bad_record") >= 1


def test_split_does_not_apply_to_a_selection_file(selection_file):
    from clipforge.errors import UsageError

    with pytest.raises(UsageError, match="split"):
        run_eval("tiny", "image-caption-selection", str(selection_file), split="test")


# -- data negatives -----------------------------------------------------------------------------------------

def _words(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower())


def _diff(a: str, b: str) -> list[tuple[str, str]]:
    wa, wb = _words(a), _words(b)
    assert len(wa) == len(wb), (a, b)
    return [(x, y) for x, y in zip(wa, wb) if x != y]


def _group(word: str, lists: dict) -> str:
    return next(g for g, ws in lists.items() if word in ws or word.rstrip("s") in ws or word[:-2] in ws)


CAPTIONS = ["a red cup on a blue table", "a dog in front of two cats", "the sky", "three green circles."]


@pytest.fixture
def caption_source(tmp_path):
    rows = []
    for i, cap in enumerate(CAPTIONS):
        rows.append({"id": f"s{i}", "image": _image(tmp_path / f"{i}.png", (10 * i, 0, 0)), "captions": [cap]})
    rows.append({"id": "nocap", "image": _image(tmp_path / "n.png", (0, 0, 0)), "captions": []})
    path = tmp_path / "src.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f"jsonl:{path}"


def test_each_kind_changes_the_caption_the_documented_way(caption_source, tmp_path, capsys):
    out = tmp_path / "neg.jsonl"
    assert main(["data", "negatives", caption_source, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    by = {(r["id"], r["type"]): r["negatives"][0] for r in recs}
    assert all(r["positive"] == CAPTIONS[int(r["id"][1:])] for r in recs)
    # swaps: the same words, two of the listed ones exchanged
    assert by[("s0", "swap-attribute")] == "a blue cup on a red table"
    assert by[("s0", "swap-object")] == "a red table on a blue cup"
    assert by[("s1", "swap-object")] == "a cat in front of two dogs"  # each slot keeps its number
    # replacements: exactly one word (or phrase) differs, within its group
    for sid in ("s0", "s3"):
        (old, new), = _diff(CAPTIONS[int(sid[1:])], by[(sid, "replace-attribute")])
        assert _group(old, ATTRIBUTES) == _group(new, ATTRIBUTES)
    for sid in ("s0", "s1", "s3"):
        (old, new), = _diff(CAPTIONS[int(sid[1:])], by[(sid, "replace-object")])
        assert _group(old, OBJECTS) == _group(new, OBJECTS) and old.endswith("s") == new.endswith("s")
    numbers = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    for sid in ("s1", "s3"):
        (old, new), = _diff(CAPTIONS[int(sid[1:])], by[(sid, "replace-number")])
        assert old in numbers and new in numbers
    assert by[("s0", "replace-relation")] == "a red cup under a blue table"
    assert by[("s1", "replace-relation")] == "a dog behind two cats"
    assert dict(RELATIONS)["in front of"] == "behind"
    # shuffle: the same words in another order
    for sid in ("s0", "s1", "s2", "s3"):
        neg = by[(sid, "shuffle")]
        assert sorted(_words(neg)) == sorted(_words(CAPTIONS[int(sid[1:])])) and _words(neg) != _words(
            CAPTIONS[int(sid[1:])])
    # what had nothing to change is skipped and counted, never rewritten another way
    expect_made = {"swap-attribute": 1, "swap-object": 2, "replace-attribute": 2, "replace-object": 4,
                   "replace-number": 2, "replace-relation": 2, "shuffle": 4}
    assert summary["made"] == expect_made  # "the sky": replace-object (sky) and shuffle only
    assert summary["nothing_to_change"] == {k: 4 - v for k, v in expect_made.items()}
    assert summary["no_caption"] == 1 and summary["written"] == len(recs) == sum(expect_made.values())
    assert ("s2", "swap-attribute") not in by and ("s2", "replace-number") not in by


def test_negatives_are_seeded_and_refuse_unknown_kinds(caption_source, tmp_path):
    from clipforge.errors import UsageError

    src = open_source(caption_source)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_negatives(src, a, seed=3)
    write_negatives(src, b, seed=3)
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(UsageError, match="kinds"):
        write_negatives(src, tmp_path / "c.jsonl", ["swap-colour"])
    with pytest.raises(UsageError, match="overwrite"):
        write_negatives(src, a)
    assert make_negative("one cat", "replace-number") is None  # "one" is left alone (plural would tell)


def test_the_cli_offers_every_kind():
    from clipforge.cli.data import _negative_kinds

    assert _negative_kinds() == list(KINDS)
